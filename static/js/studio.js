/* The admin studio: live progress bars, live curves (vendored Chart.js), confirmations.
   Polls the studio JSON API; every page works without JavaScript, only without live updates. */
(function () {
  "use strict";
  var POLL_MS = 1000;
  var TERMINAL = { succeeded: 1, failed: 1, cancelled: 1 };

  function getJSON(url) {
    return fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (r) { if (!r.ok) throw new Error(r.status); return r.json(); });
  }

  // --- confirmations: <form data-confirm="..."> ------------------------------------------------
  document.addEventListener("submit", function (ev) {
    var form = ev.target;
    var question = form.getAttribute && form.getAttribute("data-confirm");
    if (question && !window.confirm(question)) ev.preventDefault();
  }, true);

  // --- live progress bars on job rows ----------------------------------------------------------
  function setBar(bar, progress) {
    var pct = Math.round(progress * 100);
    bar.setAttribute("aria-valuenow", pct);
    bar.firstElementChild.style.width = pct + "%";
  }

  function updateRow(row, job) {
    row.setAttribute("data-status", job.status);
    var status = row.querySelector("[data-field=status]");
    if (status) { status.textContent = job.status; status.className = "badge status-" + job.status; }
    var msg = row.querySelector("[data-field=message]");
    if (msg) msg.textContent = job.message || "";
    var bar = row.querySelector(".progress");
    if (bar) setBar(bar, job.progress);
  }

  function pollRows() {
    var rows = Array.prototype.slice.call(document.querySelectorAll("tr[data-job-id]"))
      .filter(function (r) { return !TERMINAL[r.getAttribute("data-status")]; });
    if (!rows.length) return;
    var ids = rows.map(function (r) { return r.getAttribute("data-job-id"); });
    getJSON("/api/studio/jobs/?ids=" + ids.join(",")).then(function (data) {
      data.jobs.forEach(function (job) {
        var row = document.querySelector('tr[data-job-id="' + job.id + '"]');
        if (row) updateRow(row, job);
      });
    }).catch(function () {}).then(function () { setTimeout(pollRows, POLL_MS); });
  }

  // --- job detail: header, log and curves -------------------------------------------------------
  var GROUPS = [
    // the over-optimisation alarm's two curves on held-out answers: first, so they share one chart
    { id: "overopt", title: "Proxy (reward model) vs gold, held-out", match: /^(proxy|gold)_/ },
    { id: "reward", title: "Reward", match: /(^|_)reward/ },
    { id: "kl", title: "KL to reference", match: /(^|_)kl/ },
    { id: "loss", title: "Losses", match: /loss/ },
    { id: "accuracy", title: "Accuracy", match: /accuracy|win_rate/ },
    { id: "other", title: "Entropy, clipping, length", match: /entropy|clip|length|eos/ }
  ];
  var charts = {};
  var points = [];

  function groupOf(key) {
    for (var i = 0; i < GROUPS.length; i++) if (GROUPS[i].match.test(key)) return GROUPS[i];
    return null;
  }

  function chartFor(group) {
    if (charts[group.id]) return charts[group.id];
    var box = document.getElementById("charts");
    if (!box || typeof window.Chart === "undefined") return null;
    var fig = document.createElement("figure");
    fig.className = "chart";
    fig.setAttribute("data-chart", group.id);
    var cap = document.createElement("figcaption");
    cap.textContent = group.title;
    var canvas = document.createElement("canvas");
    canvas.setAttribute("role", "img");
    canvas.setAttribute("aria-label", group.title + " curve");
    fig.appendChild(cap); fig.appendChild(canvas); box.appendChild(fig);
    charts[group.id] = new window.Chart(canvas, {
      type: "line",
      data: { labels: [], datasets: [] },
      options: { animation: false, responsive: true, maintainAspectRatio: false, parsing: false,
        scales: { x: { type: "linear", title: { display: true, text: "step" } } },
        plugins: { legend: { position: "bottom" } } }
    });
    return charts[group.id];
  }

  var PALETTE = ["#3657d6", "#c2410c", "#15803d", "#7e22ce", "#b45309", "#0e7490"];

  function addPoints(rows) {
    rows.forEach(function (row) {
      points.push(row);
      var x = points.length;  // the index keeps phases (e.g. reward model then PPO) in order
      Object.keys(row).forEach(function (key) {
        if (key === "step" || key === "phase") return;
        var v = row[key];
        if (typeof v !== "number" || !isFinite(v)) return;
        var group = groupOf(key);
        if (!group) return;
        var chart = chartFor(group);
        if (!chart) return;
        var ds = chart.data.datasets.find(function (d) { return d.label === key; });
        if (!ds) {
          var color = PALETTE[chart.data.datasets.length % PALETTE.length];
          ds = { label: key, data: [], borderColor: color, backgroundColor: color, pointRadius: 1.5, borderWidth: 1.5 };
          chart.data.datasets.push(ds);
        }
        ds.data.push({ x: x, y: v });
      });
    });
    Object.keys(charts).forEach(function (k) { charts[k].update("none"); });
    var empty = document.getElementById("curves-empty");
    if (empty && points.length) empty.hidden = true;
  }

  function pollDetail(section) {
    var id = section.getAttribute("data-job-detail");
    getJSON("/api/studio/jobs/" + id + "/?since=" + points.length).then(function (job) {
      section.setAttribute("data-status", job.status);
      var status = section.querySelector("[data-field=status]");
      if (status) { status.textContent = job.status; status.className = "badge status-" + job.status; }
      var msg = section.querySelector("[data-field=message]");
      if (msg) msg.textContent = job.message || "";
      var bar = section.querySelector(".progress");
      if (bar) setBar(bar, job.progress);
      var log = document.getElementById("job-log");
      if (log && log.textContent !== job.log) { log.textContent = job.log; log.scrollTop = log.scrollHeight; }
      addPoints(job.metrics || []);
      (job.children || []).forEach(function (c) {
        var row = document.querySelector('tr[data-job-id="' + c.id + '"]');
        if (row) updateRow(row, c);
      });
      if (TERMINAL[job.status]) {
        var cancel = document.getElementById("cancel-job");
        if (cancel) cancel.closest("form").remove();
        if (job.children && job.children.length) setTimeout(function () { location.reload(); }, 500);
        return;
      }
      setTimeout(function () { pollDetail(section); }, POLL_MS);
    }).catch(function () { setTimeout(function () { pollDetail(section); }, POLL_MS * 3); });
  }

  // --- compare: two ticked versions → ?a=&b= ----------------------------------------------------
  function initCompare() {
    var form = document.getElementById("compare-form");
    if (!form) return;
    form.addEventListener("submit", function (ev) {
      if (ev.submitter && ev.submitter.getAttribute("form")) return;  // an action button
      var picks = form.querySelectorAll("input[name=pick]:checked");
      if (picks.length !== 2) { ev.preventDefault(); window.alert("Tick exactly two versions to compare."); }
    });
  }

  function initLaunch() {
    var reset = document.getElementById("reset-config");
    if (!reset) return;
    reset.addEventListener("click", function () {
      document.getElementById("config").value = reset.getAttribute("data-defaults");
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    var section = document.querySelector("[data-job-detail]");
    if (section) {
      var initial = document.getElementById("job-metrics");
      if (initial) addPoints(JSON.parse(initial.textContent) || []);
      if (!TERMINAL[section.getAttribute("data-status")]) pollDetail(section);
    }
    pollRows();
    initCompare();
    initLaunch();
  });
})();

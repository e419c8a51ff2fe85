/* The ranking page: fetch a task, rank by drag and drop or keyboard (ties allowed), submit, next.
   Keyboard on a focused reply: 1-9 = give it that rank, 0 = unrank, Left/Right = one rank
   better/worse, Up/Down = previous/next reply, Ctrl+Enter = submit. No build step, no CDN. */
(function () {
  "use strict";
  const root = document.getElementById("labeler");
  if (!root) return;
  const API = root.dataset.api.replace(/\/$/, "");
  const csrf = root.dataset.csrf;
  const $ = (sel, el) => (el || document).querySelector(sel);
  const el = (tag, attrs, ...kids) => {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") node.className = v;
      else if (k === "text") node.textContent = v;
      else node.setAttribute(k, v);
    }
    for (const kid of kids) if (kid != null) node.append(kid);
    return node;
  };
  const RATINGS = [["helpfulness", "Helpful"], ["honesty", "Honest / correct"], ["harmlessness", "Harmless"]];
  let task = null;
  let ranks = {};   // completion id -> rank (1..K) or null
  let busy = false;

  function status(msg, kind) {
    const s = $("#label-status");
    s.textContent = msg || "";
    s.className = "label-status " + (kind || "");
  }

  function setProgress(p) {
    if (!p) return;
    $("#done-today").textContent = p.done_today;
    $("#in-queue").textContent = p.in_queue + (p.in_queue_capped ? "+" : "");
  }

  async function call(path, body) {
    const res = await fetch(API + path, {
      method: "POST", credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRFToken": csrf, "Accept": "application/json" },
      body: JSON.stringify(body || {}),
    });
    let data = {};
    try { data = await res.json(); } catch (e) { data = { detail: "unexpected answer (" + res.status + ")" }; }
    return { status: res.status, data };
  }

  function cardOf(cid) { return $(`.completion[data-cid="${cid}"]`, root); }
  function cards() { return task.completions.map((c) => cardOf(c.id)); }

  function place(cid) {
    const card = cardOf(cid);
    const r = ranks[cid];
    const target = r ? $(`.bucket[data-rank="${r}"] .bucket-items`, root) : $("#pool .bucket-items", root);
    // keep shown order inside a bucket
    const idx = Number(card.dataset.index);
    const after = [...target.children].find((c) => Number(c.dataset.index) > idx);
    target.insertBefore(card, after || null);
    card.querySelector(".rank-badge").textContent = r ? "Rank " + r : "Unranked";
    card.setAttribute("aria-label", `Reply ${card.dataset.label}, ${r ? "rank " + r : "unranked"}`);
    const ranked = Object.values(ranks).filter((v) => v).length;
    $("#submit-btn").disabled = ranked !== task.completions.length;
    $("#ranked-count").textContent = `${ranked} of ${task.completions.length} ranked`;
  }

  function setRank(cid, r) {
    const k = task.completions.length;
    ranks[cid] = r && r >= 1 && r <= k ? r : null;
    const focused = document.activeElement === cardOf(cid);
    place(cid);
    if (focused) cardOf(cid).focus();
  }

  function onCardKey(ev) {
    if (ev.target !== ev.currentTarget) return; // typing in a rating/reason field
    const cid = Number(ev.currentTarget.dataset.cid);
    const index = Number(ev.currentTarget.dataset.index);
    const k = task.completions.length;
    if (ev.key >= "0" && ev.key <= "9" && !ev.ctrlKey && !ev.metaKey && !ev.altKey) {
      const n = Number(ev.key);
      if (n <= k) { setRank(cid, n || null); ev.preventDefault(); }
    } else if (ev.key === "ArrowLeft" || ev.key === "ArrowRight") {
      const cur = ranks[cid] || (ev.key === "ArrowLeft" ? k + 1 : 0);
      setRank(cid, Math.max(1, Math.min(k, cur + (ev.key === "ArrowLeft" ? -1 : 1))));
      ev.preventDefault();
    } else if (ev.key === "ArrowDown" || ev.key === "ArrowUp") {
      const next = cards()[(index + (ev.key === "ArrowDown" ? 1 : k - 1)) % k];
      next.focus();
      ev.preventDefault();
    }
  }

  function completionCard(c, i) {
    const ratings = el("div", { class: "ratings" });
    for (const [key, label] of RATINGS) {
      const sel = el("select", { name: `${key}-${c.id}`, "aria-label": `${label} rating of reply ${c.label}` },
        el("option", { value: "", text: "–" }));
      for (let v = 1; v <= 7; v++) sel.append(el("option", { value: String(v), text: String(v) }));
      ratings.append(el("label", {}, label + " ", sel));
    }
    const unsafe = el("input", { type: "checkbox", name: `unsafe-${c.id}` });
    const reason = el("input", { type: "text", name: `unsafe-reason-${c.id}`, placeholder: "why unsafe?", hidden: "" });
    unsafe.addEventListener("change", () => { reason.hidden = !unsafe.checked; if (unsafe.checked) reason.focus(); });
    const card = el("article", { class: "completion", tabindex: "0", draggable: "true", "data-cid": String(c.id),
      "data-index": String(i), "data-label": c.label },
      el("header", {}, el("span", { class: "letter", text: c.label }), el("span", { class: "rank-badge badge", text: "Unranked" })),
      el("div", { class: "completion-text", text: c.text }),
      el("details", { class: "extras" }, el("summary", { text: "Ratings and safety" }), ratings,
        el("label", { class: "unsafe" }, unsafe, " Unsafe", reason)));
    card.addEventListener("keydown", onCardKey);
    card.addEventListener("dragstart", (ev) => { ev.dataTransfer.setData("text/plain", String(c.id)); card.classList.add("dragging"); });
    card.addEventListener("dragend", () => card.classList.remove("dragging"));
    return card;
  }

  function bucket(rank, title) {
    const b = el("section", { class: "bucket", "data-rank": String(rank || 0), id: rank ? `bucket-${rank}` : "pool" },
      el("h3", { text: title }), el("div", { class: "bucket-items" }));
    b.addEventListener("dragover", (ev) => { ev.preventDefault(); b.classList.add("over"); });
    b.addEventListener("dragleave", () => b.classList.remove("over"));
    b.addEventListener("drop", (ev) => {
      ev.preventDefault();
      b.classList.remove("over");
      const cid = Number(ev.dataTransfer.getData("text/plain"));
      if (cid) setRank(cid, rank || null);
    });
    return b;
  }

  function render(data) {
    const area = $("#task-area");
    area.replaceChildren();
    task = data.task;
    ranks = {};
    $("#task-tools").hidden = !task;
    if (!task) {
      area.append(el("div", { class: "card empty-queue", id: "empty-queue" },
        el("h2", { text: "Your queue is empty" }), el("p", { text: data.message || "No tasks right now." })));
      return;
    }
    const convo = el("div", { class: "conversation" });
    for (const t of task.context) convo.append(el("div", { class: "turn turn-" + t.role },
      el("strong", { text: t.role === "assistant" ? "Tutor" : "Student" }), " ", t.content));
    convo.append(el("div", { class: "turn turn-user prompt", id: "task-prompt" }, el("strong", { text: "Student" }), " ", task.prompt));
    area.append(el("section", { class: "card" }, el("p", { class: "muted", text: `Task ${task.task_id} · ${task.subject.replace("_", " ")}` }), convo));
    const board = el("div", { class: "rank-board" });
    board.append(bucket(0, "Unranked"));
    task.completions.forEach((c, i) => board.append(bucket(i + 1, i === 0 ? "Rank 1 (best)" : `Rank ${i + 1}`)));
    area.append(board);
    task.completions.forEach((c, i) => { ranks[c.id] = null; $("#pool .bucket-items", root).append(completionCard(c, i)); });
    task.completions.forEach((c) => place(c.id));
    $("#note").value = "";
    $("#skip-reason").value = "";
    cards()[0].focus();
  }

  async function next() {
    status("Loading…");
    const res = await call("/label/next/");
    if (res.status !== 200) { status(res.data.detail || "Could not load a task", "bad"); return; }
    setProgress(res.data.progress);
    render(res.data);
    status(res.data.resumed ? "Resumed the task you were working on." : "");
  }

  function collect() {
    const byRank = {};
    const ratings = {};
    let unsafe = false;
    const reasons = [];
    for (const c of task.completions) {
      (byRank[ranks[c.id]] = byRank[ranks[c.id]] || []).push(c.id);
      const card = cardOf(c.id);
      const r = {};
      for (const [key] of RATINGS) {
        const v = card.querySelector(`select[name="${key}-${c.id}"]`).value;
        if (v) r[key] = Number(v);
      }
      if (Object.keys(r).length) ratings[c.id] = r;
      if (card.querySelector(`input[name="unsafe-${c.id}"]`).checked) {
        unsafe = true;
        reasons.push(`${c.label}: ${card.querySelector(`input[name="unsafe-reason-${c.id}"]`).value.trim() || "unsafe"}`);
      }
    }
    const order = Object.keys(byRank).map(Number).sort((a, b) => a - b).map((r) => byRank[r]);
    return { order, ratings, unsafe, unsafe_reason: reasons.join("; "), note: $("#note").value };
  }

  async function submit() {
    if (!task || busy) return;
    if (task.completions.some((c) => !ranks[c.id])) { status("Rank every reply before submitting.", "warn"); return; }
    busy = true;
    try {
      const body = collect();
      const res = await call(`/label/tasks/${task.task_id}/submit/`, body);
      if (res.status === 200 || res.status === 201) {
        setProgress(res.data.progress);
        await next();
        status(`Saved task ${res.data.ranking.task_id}. Here is the next one.`, "ok");
      } else {
        status(res.data.detail || "Not saved", "bad");
        const pre = el("pre", { class: "returned-work", text: JSON.stringify(res.data.your_submission || body, null, 2) });
        $("#task-area").prepend(el("div", { class: "card refused" }, el("p", { text: "Your work (not stored):" }), pre));
      }
    } finally { busy = false; }
  }

  async function skip() {
    if (!task || busy) return;
    const reason = $("#skip-reason").value.trim();
    if (!reason) { status("Choose or type a reason to skip.", "warn"); $("#skip-reason").focus(); return; }
    busy = true;
    try {
      const res = await call(`/label/tasks/${task.task_id}/skip/`, { reason });
      if (res.status === 200) { await next(); status("Skipped.", "ok"); } else status(res.data.detail || "Could not skip", "bad");
    } finally { busy = false; }
  }

  $("#submit-btn").addEventListener("click", submit);
  $("#skip-btn").addEventListener("click", skip);
  document.addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && (ev.ctrlKey || ev.metaKey)) { ev.preventDefault(); submit(); }
  });
  next();
})();

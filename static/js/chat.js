/* tutorloop chat: streams answers from the API, renders a safe Markdown subset, rates, copies.
 * No framework, no build step. Every text goes through esc() before any markup is added, so
 * model output can never inject HTML. Without JavaScript the page's forms still work. */
(function () {
  "use strict";

  // ---- safe rendering ----------------------------------------------------------------------
  const ESC = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };
  function esc(s) { return String(s).replace(/[&<>"']/g, (c) => ESC[c]); }

  const SYMBOLS = {
    times: "×", cdot: "·", div: "÷", pm: "±", mp: "∓", leq: "≤", le: "≤", geq: "≥", ge: "≥", neq: "≠", ne: "≠",
    approx: "≈", equiv: "≡", infty: "∞", pi: "π", alpha: "α", beta: "β", gamma: "γ", delta: "δ", theta: "θ",
    lambda: "λ", mu: "μ", sigma: "σ", phi: "φ", omega: "ω", Delta: "Δ", Sigma: "Σ", sum: "∑", prod: "∏",
    int: "∫", to: "→", rightarrow: "→", leftarrow: "←", Rightarrow: "⇒", in: "∈", circ: "°", degree: "°",
    sqrt: "√", ldots: "…", dots: "…", cdots: "⋯", quad: " ", qquad: "  ",
  };

  /* LaTeX-ish math → readable HTML (fractions, powers, indices, roots, symbols). */
  function mathToHtml(tex) {
    let t = esc(tex.trim()).replace(/\\left|\\right/g, "");
    for (let i = 0; i < 4; i++) {
      t = t.replace(/\\frac\{([^{}]*)\}\{([^{}]*)\}/g,
        '<span class="frac"><span class="num">$1</span><span class="sr-only">/</span><span class="den">$2</span></span>')
           .replace(/\\sqrt\{([^{}]*)\}/g, "√<span class=\"radicand\">$1</span>");
    }
    t = t.replace(/\^\{([^{}]*)\}/g, "<sup>$1</sup>").replace(/\^(-?[\w.]+)/g, "<sup>$1</sup>")
         .replace(/_\{([^{}]*)\}/g, "<sub>$1</sub>").replace(/_(\w)/g, "<sub>$1</sub>")
         .replace(/\\([A-Za-z]+)/g, (m, name) => SYMBOLS[name] !== undefined ? SYMBOLS[name] : name)
         .replace(/\\([{}%$#&,;! ])/g, "$1").replace(/[{}]/g, "");
    return t;
  }

  function inline(raw) {
    const keep = [];
    const hold = (html) => { keep.push(html); return "\u0000" + (keep.length - 1) + "\u0000"; };
    let s = raw.replace(/`([^`\n]+)`/g, (m, code) => hold("<code>" + esc(code) + "</code>"));
    s = s.replace(/\$\$([^$]+)\$\$|\\\[(.+?)\\\]|\\\((.+?)\\\)|\$([^\s$](?:[^$\n]*[^\s$])?)\$/g,
      (m, a, b, c, d) => hold('<span class="math">' + mathToHtml(a || b || c || d) + "</span>"));
    s = esc(s)
      .replace(/\*\*([^*]+)\*\*/g, "<strong>$1</strong>")
      .replace(/(^|[^*\w])\*([^*\s](?:[^*]*[^*\s])?)\*(?!\w)/g, "$1<em>$2</em>")
      .replace(/(^|[^_\w])_([^_\s](?:[^_]*[^_\s])?)_(?!\w)/g, "$1<em>$2</em>");
    return s.replace(/\u0000(\d+)\u0000/g, (m, i) => keep[Number(i)]);
  }

  function blocks(text) {
    const out = [];
    let para = [], list = null;
    const flushPara = () => { if (para.length) { out.push("<p>" + para.map(inline).join("<br>") + "</p>"); para = []; } };
    const closeList = () => { if (list) { out.push("</" + list + ">"); list = null; } };
    for (const line of text.split("\n")) {
      let m;
      if (!line.trim()) { flushPara(); closeList(); continue; }
      if ((m = line.match(/^\s*#{1,6}\s+(.*)$/))) { flushPara(); closeList(); out.push('<p class="md-h">' + inline(m[1]) + "</p>"); continue; }
      if ((m = line.match(/^\s*[-*•]\s+(.*)$/)) || (m = line.match(/^\s*\d+[.)]\s+(.*)$/))) {
        const kind = /^\s*\d/.test(line) ? "ol" : "ul";
        flushPara();
        if (list !== kind) { closeList(); out.push("<" + kind + ">"); list = kind; }
        out.push("<li>" + inline(m[1]) + "</li>");
        continue;
      }
      closeList();
      para.push(line);
    }
    flushPara(); closeList();
    return out.join("");
  }

  /* A small Markdown subset: paragraphs, line breaks, lists, headings, bold/italic, code, math. */
  function renderMarkdown(src) {
    return String(src).split("```").map((part, i) => {
      if (i % 2 === 0) return blocks(part);
      const nl = part.indexOf("\n");
      const code = nl >= 0 && /^[\w+#.-]*$/.test(part.slice(0, nl)) ? part.slice(nl + 1) : part;
      return "<pre><code>" + esc(code.replace(/\n$/, "")) + "</code></pre>";
    }).join("");
  }

  function renderAll(root) {
    root.querySelectorAll("[data-md]").forEach((el) => {
      if (el.dataset.raw === undefined) el.dataset.raw = el.textContent;
      el.innerHTML = renderMarkdown(el.dataset.raw);
    });
    root.querySelectorAll("time[datetime]").forEach((el) => {
      const d = new Date(el.getAttribute("datetime"));
      if (!isNaN(d)) {
        el.title = d.toLocaleString();
        el.textContent = d.toLocaleString([], { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" });
      }
    });
  }

  window.tutorMarkdown = renderMarkdown; // exposed for tests and the console

  // ---- page wiring -----------------------------------------------------------------------------
  const chat = document.getElementById("chat");
  if (!chat) return;
  const log = document.getElementById("chat-log");
  const composer = document.getElementById("composer");
  const input = document.getElementById("composer-input");
  const sendBtn = document.getElementById("send-btn");
  const stopBtn = document.getElementById("stop-btn");
  const counter = document.getElementById("counter");
  const maxChars = Number(chat.dataset.maxChars) || 2000;
  const csrf = () => (document.querySelector("input[name=csrfmiddlewaretoken]") || {}).value || "";
  let controller = null;

  renderAll(document);
  scrollToEnd(true);
  input.focus();

  function scrollToEnd(force) {
    const near = log.scrollHeight - log.scrollTop - log.clientHeight < 120;
    if (force || near) log.scrollTop = log.scrollHeight;
  }

  function autosize() {
    input.style.height = "auto";
    input.style.height = Math.min(input.scrollHeight, 220) + "px";
    const n = input.value.length;
    counter.textContent = n > maxChars * 0.8 ? n + " / " + maxChars : "";
    counter.classList.toggle("bad", n > maxChars);
  }
  input.addEventListener("input", autosize);
  input.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      if (!controller) composer.requestSubmit();
    }
  });

  function setBusy(busy) {
    sendBtn.disabled = busy;
    stopBtn.hidden = !busy;
    chat.classList.toggle("busy", busy);
    log.querySelectorAll("[data-regenerate] button, [data-retry] button").forEach((b) => { b.disabled = busy; });
  }

  function flash(text) {
    let box = document.getElementById("chat-error");
    if (!box) {
      box = document.createElement("p");
      box.id = "chat-error";
      box.className = "chat-error";
      box.setAttribute("role", "alert");
      composer.before(box);
    }
    box.textContent = text;
    box.hidden = !text;
  }

  function urlWith(template, id) { return template.replace(/\/0\/(?!.*\/0\/)/, "/" + id + "/"); }

  async function replaceTurn(questionId, li) {
    const resp = await fetch(urlWith(chat.dataset.turnUrl, questionId), { headers: { Accept: "text/html" } });
    if (!resp.ok) return false;
    const tpl = document.createElement("template");
    tpl.innerHTML = (await resp.text()).trim();
    const fresh = tpl.content.firstElementChild;
    renderAll(fresh);
    li.replaceWith(fresh);
    scrollToEnd(false);
    return fresh;
  }

  function streamingArticle() {
    const art = document.createElement("article");
    art.className = "msg msg-assistant streaming";
    art.setAttribute("aria-label", "Tutor answer");
    art.setAttribute("aria-busy", "true");
    art.innerHTML = '<div class="msg-body md"><span class="typing" aria-label="The tutor is writing"><i></i><i></i><i></i></span></div>' +
      '<footer class="msg-meta"><span class="muted small">writing…</span></footer>';
    return art;
  }

  /* POST to the API with a streamed answer (JSON lines), painting tokens as they arrive. */
  async function ask(url, body, li) {
    flash("");
    controller = new AbortController();
    setBusy(true);
    const art = streamingArticle();
    li.querySelectorAll(".regen-form, .msg-missing").forEach((el) => el.remove());
    const prev = li.querySelector(":scope > .msg-assistant:not(.streaming)");
    if (prev) prev.classList.add("superseded");
    li.appendChild(art);
    scrollToEnd(true);
    const bodyEl = art.querySelector(".msg-body");
    let text = "", questionId = li.dataset.question, finished = false;
    try {
      const resp = await fetch(url + "?stream=1", {
        method: "POST", signal: controller.signal, credentials: "same-origin",
        headers: { "Content-Type": "application/json", Accept: "application/jsonlines", "X-CSRFToken": csrf() },
        body: body ? JSON.stringify(body) : "{}",
      });
      if (!resp.ok) {
        let detail = "the request failed (" + resp.status + ")";
        try {
          const data = await resp.json();
          detail = data.detail || (data.content && data.content[0]) || JSON.stringify(data);
        } catch (e) { /* not JSON */ }
        art.remove();
        if (prev) prev.classList.remove("superseded");
        if (body && !questionId) { li.remove(); input.value = body.content; autosize(); }
        flash(resp.status === 429 ? "Slow down a little: " + detail : detail);
        return;
      }
      const reader = resp.body.getReader();
      const decoder = new TextDecoder();
      let buf = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += decoder.decode(value, { stream: true });
        let nl;
        while ((nl = buf.indexOf("\n")) >= 0) {
          const line = buf.slice(0, nl).trim();
          buf = buf.slice(nl + 1);
          if (!line) continue;
          const ev = JSON.parse(line);
          if (ev.event === "start") {
            questionId = String(ev.user_message.id);
            li.dataset.question = questionId;
            const title = document.querySelector(".chat-title");
            if (title && title.dataset.untitled !== undefined) {
              const line = ev.user_message.content.split(/\s+/).join(" ");
              title.textContent = line.length <= 60 ? line : line.slice(0, 59).trimEnd() + "…";
              delete title.dataset.untitled;
              addToSidebar(title.textContent);
            }
          } else if (ev.event === "token") {
            text += ev.text;
            bodyEl.innerHTML = renderMarkdown(text) + '<span class="caret" aria-hidden="true"></span>';
            scrollToEnd(false);
          } else if (ev.event === "done") {
            finished = true;
          } else if (ev.event === "error") {
            finished = true;
            flash("The tutor could not finish: " + ev.error + ". Your message is saved — press Retry.");
          }
        }
      }
      if (questionId) await replaceTurn(questionId, li);
    } catch (err) {
      if (err.name === "AbortError") {
        // Stopped: the server keeps what arrived (marked incomplete); show its saved copy.
        art.classList.remove("streaming");
        art.removeAttribute("aria-busy");
        art.querySelector(".msg-meta").innerHTML = '<span class="warn small">Stopped — the part shown is kept.</span>';
        bodyEl.innerHTML = renderMarkdown(text);
        if (questionId) await pollSavedTurn(questionId, li, text.length > 0);
      } else if (!finished) {
        flash("Connection lost: " + err.message + ". Your message is saved — press Retry.");
        if (questionId) await replaceTurn(questionId, li).catch(() => {});
      }
    } finally {
      controller = null;
      setBusy(false);
      input.focus();
    }
  }

  /* The first message gives the conversation its title: list it in the sidebar right away. */
  function addToSidebar(text) {
    const list = document.querySelector(".conv-list");
    if (!list || list.querySelector("a[aria-current=page]")) return;
    const empty = list.querySelector("p");
    if (empty) empty.remove();
    const a = document.createElement("a");
    a.href = location.pathname;
    a.setAttribute("aria-current", "page");
    const tag = document.querySelector(".chat-head .subject-tag");
    a.innerHTML = '<span class="conv-title">' + esc(text) + '</span><span class="conv-meta"><span class="dot ' +
      esc(tag ? tag.className.replace("subject-tag ", "") : "") + '"></span>' + esc(tag ? tag.textContent : "") + " · now</span>";
    list.prepend(a);
  }

  /* After Stop the server saves the partial answer a moment later: poll for it (bounded). */
  async function pollSavedTurn(questionId, li, expectAnswer) {
    const deadline = Date.now() + 4000;
    while (Date.now() < deadline) {
      const resp = await fetch(urlWith(chat.dataset.turnUrl, questionId));
      if (resp.ok) {
        const html = await resp.text();
        if (!expectAnswer || html.includes('class="msg msg-assistant') && html.includes("incomplete")) {
          const tpl = document.createElement("template");
          tpl.innerHTML = html.trim();
          const fresh = tpl.content.firstElementChild;
          renderAll(fresh);
          (document.querySelector('li.turn[data-question="' + questionId + '"]') || li).replaceWith(fresh);
          return;
        }
      }
      await new Promise((r) => setTimeout(r, 250));
    }
  }

  composer.addEventListener("submit", (e) => {
    e.preventDefault();
    const content = input.value.trim();
    if (!content || controller) return;
    if (content.length > maxChars) { flash("Your message is " + content.length + " characters; the limit is " + maxChars + "."); return; }
    const empty = document.getElementById("chat-empty");
    if (empty) empty.remove();
    const li = document.createElement("li");
    li.className = "turn";
    const now = new Date();
    li.innerHTML = '<article class="msg msg-user" aria-label="Your message"><div class="msg-body">' + esc(content) +
      '</div><footer class="msg-meta"><time datetime="' + now.toISOString() + '">' +
      esc(now.toLocaleString([], { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" })) + "</time></footer></article>";
    log.querySelectorAll(".regen-form").forEach((el) => el.remove());
    log.appendChild(li);
    input.value = "";
    autosize();
    ask(chat.dataset.api, { content }, li);
  });

  stopBtn.addEventListener("click", () => { if (controller) controller.abort(); });
  document.addEventListener("keydown", (e) => { if (e.key === "Escape" && controller) controller.abort(); });

  log.addEventListener("submit", async (e) => {
    const form = e.target;
    if (form.matches("[data-regenerate], [data-retry]")) {
      e.preventDefault();
      if (controller) return;
      ask(chat.dataset.regenerateApi, null, form.closest("li.turn"));
    } else if (form.matches("[data-rate]")) {
      e.preventDefault();
      const status = form.querySelector(".rate-status");
      const value = Number((e.submitter && e.submitter.value) || -1);
      const reasons = [...form.querySelectorAll("input[name=reasons]:checked")].map((x) => x.value);
      const comment = form.querySelector("textarea[name=comment]").value;
      const resp = await fetch(urlWith(chat.dataset.ratingApi, form.dataset.rate), {
        method: "PUT", credentials: "same-origin",
        headers: { "Content-Type": "application/json", "X-CSRFToken": csrf() },
        body: JSON.stringify({ value, reasons, comment }),
      });
      if (resp.ok) {
        form.querySelectorAll(".thumb").forEach((b) => b.setAttribute("aria-pressed", String(Number(b.value) === value)));
        form.querySelector(".save-rating").value = String(value);
        status.textContent = "Thanks — feedback saved.";
        if (value === -1 && !reasons.length && !comment) form.querySelector(".rate-more").open = true;
      } else {
        status.textContent = "Could not save the rating (" + resp.status + ").";
      }
    }
  });

  log.addEventListener("click", async (e) => {
    const btn = e.target.closest("[data-copy]");
    if (!btn) return;
    const body = btn.closest(".msg").querySelector("[data-md]");
    const text = body.dataset.raw !== undefined ? body.dataset.raw : body.textContent;
    try {
      await navigator.clipboard.writeText(text);
    } catch (err) {
      const ta = document.createElement("textarea");
      ta.value = text; document.body.appendChild(ta); ta.select(); document.execCommand("copy"); ta.remove();
    }
    btn.textContent = "Copied";
    setTimeout(() => { btn.textContent = "Copy"; }, 1500);
  });
})();

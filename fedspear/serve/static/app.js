// fedspear client page: ask, judge, hint, revise. Talks only to this device's fedspear serve (same origin).
"use strict";

const $ = (id) => document.getElementById(id);
// Logging in is the server's business: the one-time link `fedspear serve` printed sets an HttpOnly session cookie
// (this script never sees the secret, and nothing is stored in the browser's storage) and redirects here; the
// browser sends the cookie with every API call below.
localStorage.removeItem("fedspear-token");  // a token an earlier fedspear kept here: it opens nothing now
const SESSION = (() => {
  let s = sessionStorage.getItem("fedspear-session");
  if (!s) {
    s = Array.from(crypto.getRandomValues(new Uint8Array(12)), (b) => b.toString(16).padStart(2, "0")).join("");
    sessionStorage.setItem("fedspear-session", s);
  }
  return s;
})();

let status = null;        // last /api/status
let current = null;       // the interaction on screen
let busy = false;

function showError(message) {
  const el = $("error");
  el.textContent = message;
  el.hidden = !message;
}

function headers() {
  return { "Content-Type": "application/json", "X-Fedspear-Session": SESSION };
}

// Not logged in (or logged in to an earlier start of the server): every call is refused with 401; say how to get in.
function locked(res) {
  if (res.status !== 401) return false;
  $("locked").hidden = false;
  $("ask-panel").hidden = true;
  return true;
}

async function api(method, path, body) {
  const res = await fetch(path, {
    method,
    headers: headers(),
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (!res.ok) {
    if (locked(res)) throw new Error("this page needs the login link `fedspear serve` printed (see above)");
    throw new Error(await errorText(res));
  }
  return res.json();
}

async function errorText(res) {
  try {
    const data = await res.json();
    if (typeof data.detail === "string") return data.detail;
    if (Array.isArray(data.detail)) return data.detail.map((d) => d.msg || JSON.stringify(d)).join("; ");
    return JSON.stringify(data.detail);
  } catch (e) {
    return `request failed (${res.status})`;
  }
}

function adapterText(adapter) {
  if (!adapter) return "?";
  return `v${adapter.version}` + (adapter.label ? ` (${adapter.label})` : "");
}

async function refreshStatus() {
  try {
    status = await api("GET", "/api/status");
  } catch (e) {
    return;
  }
  $("model-name").textContent = status.model;
  $("adapter-version").textContent = adapterText(status.adapter);
  const c = status.counts;
  $("trace-count").textContent = `${c.total} (${c.untrained} not yet trained on)`;
  $("question").maxLength = status.limits.max_question_chars;
  $("hint").maxLength = status.limits.max_hint_chars;
}

// ------------------------------------------------------------------------------------------- attempts

function attemptCard(idx) {
  const card = document.createElement("div");
  card.className = "attempt";
  card.dataset.testid = `attempt-${idx}`;
  card.setAttribute("data-testid", `attempt-${idx}`);
  const title = document.createElement("div");
  title.className = "title";
  title.textContent = idx === 0 ? "Answer" : `Revision ${idx}`;
  card.appendChild(title);
  const answer = document.createElement("div");
  answer.className = "answer streaming";
  answer.setAttribute("data-testid", `answer-${idx}`);
  card.appendChild(answer);
  const meta = document.createElement("div");
  meta.className = "meta";
  meta.setAttribute("data-testid", `meta-${idx}`);
  meta.textContent = "answering…";
  card.appendChild(meta);
  $("attempts").appendChild(card);
  return card;
}

function addFeedback(card, hint) {
  const fb = document.createElement("div");
  fb.className = "feedback";
  fb.textContent = `Your hint: ${hint}`;
  card.insertBefore(fb, card.children[1]);
}

function verdictButtons(card, idx) {
  const row = document.createElement("div");
  row.className = "row verdict";
  const labels = idx === 0 ? ["Right", "Wrong"] : ["Accept", "Reject"];
  const ids = idx === 0 ? ["verdict-right", "verdict-wrong"] : ["accept", "reject"];
  [true, false].forEach((correct, i) => {
    const b = document.createElement("button");
    b.textContent = labels[i];
    b.className = correct ? "good" : "bad";
    b.setAttribute("data-testid", ids[i]);
    b.addEventListener("click", () => judge(card, idx, correct, row));
    row.appendChild(b);
  });
  card.appendChild(row);
}

// Stream one answer: NDJSON events start / token / done / error.
async function streamAnswer(path, body, card) {
  const answer = card.querySelector(".answer");
  const meta = card.querySelector(".meta");
  const res = await fetch(path, {
    method: "POST",
    headers: headers(),
    body: JSON.stringify({ ...body, stream: true }),
  });
  if (!res.ok) {
    if (locked(res)) throw new Error("this page needs the login link `fedspear serve` printed (see above)");
    throw new Error(await errorText(res));
  }
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  let done = null;
  for (;;) {
    const { value, done: finished } = await reader.read();
    if (value) buffer += decoder.decode(value, { stream: true });
    let nl;
    while ((nl = buffer.indexOf("\n")) >= 0) {
      const line = buffer.slice(0, nl).trim();
      buffer = buffer.slice(nl + 1);
      if (!line) continue;
      const ev = JSON.parse(line);
      if (ev.event === "start") meta.textContent = `answering with adapter ${adapterText(ev.adapter)}…`;
      else if (ev.event === "token") answer.textContent += ev.text;
      else if (ev.event === "done") done = ev;
      else if (ev.event === "error") throw new Error(ev.detail);
    }
    if (finished) break;
  }
  answer.classList.remove("streaming");
  if (!done) throw new Error("the answer was interrupted; nothing was stored");
  answer.textContent = done.interaction.attempts[done.attempt].text || "(empty answer)";
  const lat = done.latency;
  const first = lat.first_token_seconds == null ? "" : ` · first token ${lat.first_token_seconds.toFixed(2)} s`;
  meta.textContent = `answered by adapter ${adapterText(done.adapter)} · ${lat.seconds.toFixed(2)} s${first} · ${lat.tokens} tokens`;
  meta.setAttribute("data-adapter-version", String(done.adapter ? done.adapter.version : ""));
  return done;
}

function setBusy(value) {
  busy = value;
  for (const id of ["ask", "ask-example", "revise", "give-up", "new-question"]) $(id).disabled = value;
}

// ------------------------------------------------------------------------------------------- actions

async function ask(body) {
  if (busy) return;
  showError("");
  await closeCurrent();
  setBusy(true);
  $("attempts").replaceChildren();
  $("outcome").textContent = "";
  $("hint-box").hidden = true;
  $("conversation").hidden = false;
  $("prompt").textContent = body.question || $("example-select").selectedOptions[0]?.dataset.prompt || "";
  const card = attemptCard(0);
  try {
    const done = await streamAnswer("/api/ask", body, card);
    current = done.interaction;
    $("prompt").textContent = current.question;
    verdictButtons(card, 0);
  } catch (e) {
    card.remove();
    showError(e.message);
    $("conversation").hidden = !current;
  } finally {
    setBusy(false);
    refreshStatus();
    refreshHistory();
  }
}

async function judge(card, idx, correct, row) {
  if (busy || !current) return;
  showError("");
  setBusy(true);
  try {
    current = await api("POST", `/api/interactions/${current.id}/verdict`, { attempt: idx, correct });
    row.remove();
    card.classList.add(correct ? "right" : "wrong");
    showState();
  } catch (e) {
    showError(e.message);
  } finally {
    setBusy(false);
    refreshStatus();
    refreshHistory();
  }
}

function showState() {
  const s = current.state;
  const hintBox = $("hint-box");
  hintBox.hidden = s !== "awaiting_hint";
  const messages = {
    accepted: "Marked right. It will count as a good answer in the next training round.",
    fixed: "Revision accepted. The next training round teaches the model this answer to the original question.",
    unfixed: "No accepted revision. The first answer is kept as one to avoid; training uses it together with accepted answers.",
    abandoned: "Closed without a verdict.",
    awaiting_hint: "",
  };
  $("outcome").textContent = messages[s] ?? "";
  if (s === "awaiting_hint") {
    $("revisions-left").textContent = `${current.revisions_left} of ${current.max_revisions} revision(s) left`;
    $("hint").value = "";
    $("hint").focus();
  }
}

async function revise() {
  if (busy || !current) return;
  const hint = $("hint").value.trim();
  if (!hint) { showError("Type a hint first."); return; }
  showError("");
  setBusy(true);
  const idx = current.attempts.length;
  const card = attemptCard(idx);
  addFeedback(card, hint);
  $("hint-box").hidden = true;
  try {
    const done = await streamAnswer(`/api/interactions/${current.id}/revise`, { hint }, card);
    current = done.interaction;
    verdictButtons(card, idx);
  } catch (e) {
    card.remove();
    showError(e.message);
    $("hint-box").hidden = false;
  } finally {
    setBusy(false);
    refreshStatus();
    refreshHistory();
  }
}

async function closeCurrent() {
  if (current && (current.state === "awaiting_hint" || current.state === "awaiting_verdict")) {
    try { current = await api("POST", `/api/interactions/${current.id}/close`); } catch (e) { /* already closed */ }
  }
}

async function giveUp() {
  if (busy) return;
  await closeCurrent();
  if (current) showState();
  refreshStatus();
  refreshHistory();
}

async function newQuestion() {
  if (busy) return;
  await closeCurrent();
  current = null;
  $("conversation").hidden = true;
  $("question").value = "";
  $("question").focus();
  refreshStatus();
  refreshHistory();
}

async function loadExamples() {
  const group = $("example-group").value;
  const select = $("example-select");
  try {
    const items = await api("GET", `/api/examples?limit=200${group ? "&group=" + group : ""}`);
    select.replaceChildren(...items.map((it) => {
      const o = document.createElement("option");
      o.value = it.id;
      o.dataset.prompt = it.prompt;
      o.textContent = it.prompt.split("\n")[0].replace(/^Question:\s*/, "") + (it.choices.length ? " (options)" : "");
      return o;
    }));
  } catch (e) {
    showError(e.message);
  }
}

async function refreshHistory() {
  try {
    const items = await api("GET", "/api/interactions?limit=10");
    $("history").replaceChildren(...items.map((it) => {
      const li = document.createElement("li");
      const last = it.attempts[it.attempts.length - 1];
      li.textContent = `${it.question.split("\n")[0]} → ${last ? last.text : ""} `;
      const st = document.createElement("span");
      st.className = "state";
      st.textContent = `[${it.state.replace("_", " ")}, adapter v${last ? last.adapter_version : "?"}]`;
      li.appendChild(st);
      return li;
    }));
  } catch (e) { /* the list is optional */ }
}

$("ask").addEventListener("click", () => {
  const q = $("question").value.trim();
  if (!q) { showError("Type a question first."); return; }
  ask({ question: q });
});
$("question").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); $("ask").click(); }
});
$("hint").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); $("revise").click(); }
});
$("ask-example").addEventListener("click", () => {
  const id = $("example-select").value;
  if (!id) { showError("No task question selected."); return; }
  ask({ example_id: id });
});
$("example-group").addEventListener("change", loadExamples);
$("revise").addEventListener("click", revise);
$("give-up").addEventListener("click", giveUp);
$("new-question").addEventListener("click", newQuestion);

refreshStatus();
refreshHistory();
loadExamples();
setInterval(refreshStatus, 3000);

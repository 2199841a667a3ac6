// The chat page of `pacos serve`: answers streamed from /v1/chat/completions, conversations kept in this
// browser's localStorage, the API key (when the server has one) in this tab's sessionStorage only.
// Model output is untrusted: markdown() escapes all of it before adding tags of its own.
"use strict";

const STORE = "pacos.chat.conversations";
const SETTINGS = "pacos.chat.settings";
const KEY = "pacos.chat.key"; // sessionStorage: gone when the tab closes, never written to localStorage
const SAMPLING = ["temperature", "top_p", "max_tokens", "seed"];
const DEFAULTS = { temperature: "0.7", top_p: "0.95", max_tokens: "512", seed: "", system: "" };

const $ = (id) => document.getElementById(id);
let conversations = readJSON(STORE, []).map(cleanConversation).filter(Boolean);
let settings = { ...DEFAULTS, ...readJSON(SETTINGS, {}) };
let currentId = newest()?.id ?? null;
let model = null; // the served model's id, from /v1/models
let controller = null; // aborts the answer being streamed
let streaming = null; // the conversation that answer belongs to

// -- storage ------------------------------------------------------------------------------------------------

function readJSON(key, fallback) {
  try {
    return JSON.parse(localStorage.getItem(key)) ?? fallback;
  } catch {
    return fallback;
  }
}

function save() {
  try {
    localStorage.setItem(STORE, JSON.stringify(conversations));
  } catch (error) {
    showStatus(`Could not save the conversations in this browser: ${error.message}`);
  }
}

function saveSettings() {
  localStorage.setItem(SETTINGS, JSON.stringify(settings));
}

const newId = () => Date.now().toString(36) + Math.random().toString(36).slice(2, 10);
const titleOf = (text) => text.trim().split("\n")[0].slice(0, 48) || "New chat";
const current = () => conversations.find((c) => c.id === currentId) ?? null;

function newest() {
  return conversations.reduce((a, b) => (a && a.updated >= b.updated ? a : b), null);
}

// A conversation from storage or an imported file, with only the fields and types the page uses.
function cleanConversation(raw) {
  if (!raw || typeof raw !== "object" || !Array.isArray(raw.messages)) return null;
  const messages = raw.messages
    .filter((m) => m && ["user", "assistant"].includes(m.role) && typeof m.content === "string")
    .map((m) => {
      const message = { role: m.role, content: m.content };
      const s = m.stats;
      if (s && Number.isFinite(s.tokens) && Number.isFinite(s.seconds)) {
        message.stats = { tokens: s.tokens, seconds: s.seconds, counted: Boolean(s.counted) };
      }
      if (m.stopped === true) message.stopped = true;
      if (m.finish === "length" || m.finish === "stop") message.finish = m.finish;
      return message;
    });
  const now = Date.now();
  const title = typeof raw.title === "string" ? raw.title.trim() : "";
  return {
    id: typeof raw.id === "string" && raw.id ? raw.id : newId(),
    title: title || titleOf(messages[0]?.content ?? ""),
    system: typeof raw.system === "string" ? raw.system : "",
    created: Number(raw.created) || now,
    updated: Number(raw.updated) || now,
    messages,
  };
}

function newConversation() {
  const now = Date.now();
  const conv = { id: newId(), title: "New chat", system: settings.system, messages: [] };
  conv.created = conv.updated = now;
  conversations.push(conv);
  currentId = conv.id;
  return conv;
}

// -- the API ------------------------------------------------------------------------------------------------

class HTTPError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

function authHeaders() {
  const key = sessionStorage.getItem(KEY);
  return key ? { Authorization: `Bearer ${key}` } : {};
}

// The message of an OpenAI-style error body, {"error": {"message": ...}}.
async function errorText(response) {
  try {
    const body = await response.json();
    if (typeof body?.error?.message === "string") return body.error.message;
  } catch {
    // not JSON: a proxy's page
  }
  return `HTTP ${response.status} ${response.statusText}`.trim();
}

async function loadModel() {
  let response;
  try {
    response = await fetch("/v1/models", { headers: authHeaders() });
  } catch {
    return showStatus("Network error: cannot reach the server. Is `pacos serve` still running?");
  }
  if (response.status === 401) return askKey();
  if (!response.ok) return showStatus(await errorText(response));
  model = (await response.json()).data?.[0]?.id ?? null;
  $("model").textContent = model ?? "pacos";
  document.title = `${model ?? "pacos"} · pacos chat`;
  renderMessages();
}

function askKey() {
  const refused = sessionStorage.getItem(KEY) !== null;
  sessionStorage.removeItem(KEY);
  $("key-error").textContent = "The server refused that key.";
  $("key-error").hidden = !refused;
  if (!$("key-dialog").open) $("key-dialog").showModal();
  $("key").focus();
}

// The JSON payloads of a server-sent event stream, until [DONE].
async function* serverEvents(response) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value.replace(/\r/g, ""); // JSON escapes its own \r, so any here is a line ending
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const lines = buffer.slice(0, end).split("\n");
      buffer = buffer.slice(end + 2);
      const data = lines.filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trim()).join("\n");
      if (data === "[DONE]") return;
      if (data) yield JSON.parse(data);
    }
  }
}

function sampling() {
  const body = {};
  for (const name of SAMPLING) {
    const value = $(name).value.trim();
    if (value !== "") body[name] = Number(value);
  }
  return body;
}

// Streams an answer to the conversation's last user message into a new assistant message.
async function generate(conv) {
  hideStatus();
  const messages = conv.messages.map(({ role, content }) => ({ role, content }));
  if (conv.system.trim()) messages.unshift({ role: "system", content: conv.system });
  const answer = { role: "assistant", content: "" };
  conv.messages.push(answer);
  conv.updated = Date.now();
  controller = new AbortController();
  streaming = conv;
  render();
  scrollDown();
  const started = performance.now();
  let chunks = 0;
  let usage = null;
  let failure = null;
  try {
    const response = await fetch("/v1/chat/completions", {
      method: "POST",
      headers: { "Content-Type": "application/json", ...authHeaders() },
      body: JSON.stringify({
        model: model ?? undefined,
        messages,
        stream: true,
        stream_options: { include_usage: true },
        ...sampling(),
      }),
      signal: controller.signal,
    });
    if (!response.ok) throw new HTTPError(response.status, await errorText(response));
    for await (const chunk of serverEvents(response)) {
      if (chunk.error) throw new HTTPError(500, chunk.error.message);
      if (chunk.usage) usage = chunk.usage;
      const choice = chunk.choices?.[0];
      if (choice?.delta?.content) {
        answer.content += choice.delta.content;
        chunks += 1;
        showAnswer(conv, answer);
      }
      if (choice?.finish_reason) answer.finish = choice.finish_reason;
    }
  } catch (error) {
    // Aborting the fetch closes the connection: the server drops the sequence from its batch at once.
    if (error.name === "AbortError") answer.stopped = true;
    else failure = error;
  }
  controller = null;
  streaming = null;
  if (failure && !answer.content) {
    conv.messages.pop(); // nothing came back: the question stays, for Regenerate
  } else {
    // Without a usage chunk (stopped, failed) count the chunks: about a token each.
    const tokens = usage?.completion_tokens ?? chunks;
    answer.stats = { tokens, seconds: (performance.now() - started) / 1000, counted: !usage };
  }
  save();
  render();
  if (failure) report(failure);
}

function report(error) {
  if (error instanceof TypeError) {
    return showStatus(`Network error: no answer from the server (${error.message}).`);
  }
  if (!(error instanceof HTTPError)) {
    return showStatus(`The server's answer could not be read: ${error.message}`);
  }
  if (error.status === 401) {
    askKey();
    return showStatus("The server needs its API key: enter it, then press Regenerate.");
  }
  if (error.status === 429) {
    return showStatus(`The server is busy: ${error.message}. Press Regenerate to try again.`);
  }
  if (error.status < 500) return showStatus(`The server refused the request: ${error.message}`);
  return showStatus(`Server error: ${error.message}`);
}

// -- actions ------------------------------------------------------------------------------------------------

function send() {
  const text = $("input").value.trim();
  if (!text || controller) return;
  const conv = current() ?? newConversation();
  if (!conv.messages.length) conv.title = titleOf(text);
  conv.messages.push({ role: "user", content: text });
  $("input").value = "";
  save();
  generate(conv);
}

function regenerate() {
  const conv = current();
  if (!conv || controller) return;
  if (conv.messages.at(-1)?.role === "assistant") conv.messages.pop();
  if (conv.messages.length) generate(conv);
}

// Edit a user message in place; sending it drops everything after it.
function edit(index) {
  const conv = current();
  const view = $("messages").children[index];
  const area = el("textarea", { rows: 3, value: conv.messages[index].content });
  const resend = () => {
    const text = area.value.trim();
    if (!text || controller) return;
    conv.messages = [...conv.messages.slice(0, index), { role: "user", content: text }];
    if (index === 0) conv.title = titleOf(text);
    save();
    generate(conv);
  };
  area.addEventListener("keydown", (event) => onEnter(event, resend));
  view.querySelector(".body").replaceWith(area);
  const meta = view.querySelector(".meta");
  meta.replaceChildren(button("Send", resend, "resend"), button("Cancel", renderMessages));
  area.focus();
}

// Enter sends and Shift+Enter starts a line; an Enter that picks an IME candidate (Chinese, Japanese)
// must do neither: isComposing, or keyCode 229 where a browser reports composition only that way.
function onEnter(event, action) {
  if (event.key !== "Enter" || event.shiftKey || event.isComposing || event.keyCode === 229) return;
  event.preventDefault();
  action();
}

function openConversation(id) {
  currentId = id;
  $("system").value = current()?.system ?? settings.system;
  hideStatus();
  render();
  scrollDown();
}

function rename(conv, item) {
  const input = el("input", { value: conv.title, placeholder: "Title" });
  let done = false;
  const finish = (keep) => {
    if (done) return;
    done = true;
    if (keep && input.value.trim()) conv.title = input.value.trim();
    save();
    renderList();
  };
  input.addEventListener("keydown", (event) => {
    if (event.key === "Escape") finish(false);
    else onEnter(event, () => finish(true));
  });
  input.addEventListener("blur", () => finish(true));
  item.replaceChildren(input);
  input.focus();
  input.select();
}

function remove(conv) {
  if (!confirm(`Delete "${conv.title}"?`)) return;
  if (streaming === conv) controller.abort();
  conversations = conversations.filter((c) => c !== conv);
  if (currentId === conv.id) currentId = newest()?.id ?? null;
  save();
  openConversation(currentId);
}

function exportAll() {
  const data = JSON.stringify({ format: "pacos-chat", version: 1, conversations }, null, 2);
  const url = URL.createObjectURL(new Blob([data], { type: "application/json" }));
  const day = new Date().toISOString().slice(0, 10);
  el("a", { href: url, download: `pacos-chat-${day}.json` }).click();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}

// Adds the conversations of an exported file; one with the same id as a kept one replaces it.
async function importFile(file) {
  try {
    const data = JSON.parse(await file.text());
    const list = Array.isArray(data) ? data : data?.conversations;
    if (!Array.isArray(list)) throw new Error("it holds no conversations");
    const imported = list.map(cleanConversation).filter(Boolean);
    const ids = new Set(imported.map((c) => c.id));
    conversations = [...conversations.filter((c) => !ids.has(c.id)), ...imported];
    save();
    openConversation(imported[0]?.id ?? currentId);
    showStatus(`Imported ${imported.length} conversation${imported.length === 1 ? "" : "s"}.`, "info");
  } catch (error) {
    showStatus(`Could not import ${file.name}: ${error.message}`);
  }
}

async function copyText(text, target) {
  try {
    await navigator.clipboard.writeText(text); // only in a secure context (https, localhost)
  } catch {
    const area = el("textarea", { value: text });
    document.body.append(area);
    area.select();
    document.execCommand("copy");
    area.remove();
  }
  target.textContent = "Copied";
  setTimeout(() => (target.textContent = "Copy"), 1200);
}

// -- views --------------------------------------------------------------------------------------------------

function el(tag, props = {}, ...children) {
  const node = Object.assign(document.createElement(tag), props);
  node.append(...children);
  return node;
}

function button(text, onclick, className = "") {
  return el("button", { type: "button", textContent: text, onclick, className });
}

function showStatus(text, kind = "error") {
  $("status").textContent = text;
  $("status").className = kind;
  $("status").hidden = false;
}

function hideStatus() {
  $("status").hidden = true;
}

function render() {
  renderList();
  renderMessages();
}

function renderList() {
  const list = $("conversations");
  list.replaceChildren();
  for (const conv of [...conversations].sort((a, b) => b.updated - a.updated)) {
    const item = el("li", { className: conv.id === currentId ? "current" : "" });
    const title = button(conv.title, () => openConversation(conv.id), "title");
    title.title = conv.title;
    const renameButton = button("✎", () => rename(conv, item), "rename");
    renameButton.title = "Rename";
    const deleteButton = button("×", () => remove(conv), "delete");
    deleteButton.title = "Delete";
    item.append(title, renameButton, deleteButton);
    list.append(item);
  }
}

function renderMessages() {
  const conv = current();
  const busy = controller !== null;
  const box = $("messages");
  box.replaceChildren(...(conv?.messages ?? []).map((m, i) => messageView(m, i, busy)));
  if (!box.children.length) {
    box.append(el("p", { id: "empty", textContent: "Send a message to start a conversation." }));
  }
  $("send").hidden = busy;
  $("stop").hidden = !busy;
  $("regenerate").disabled = busy || !conv?.messages.length;
}

function messageView(message, index, busy) {
  const user = message.role === "user";
  const body = el("div", { className: "body" });
  if (user) body.textContent = message.content;
  else fillAnswer(body, message.content);
  const meta = el("div", { className: "meta" });
  if (message.stats) meta.append(el("span", { className: "stats", textContent: statsText(message) }));
  meta.append(button("Copy", (event) => copyText(message.content, event.currentTarget), "copy"));
  if (user) meta.append(Object.assign(button("Edit", () => edit(index), "edit"), { disabled: busy }));
  const role = el("div", { className: "role", textContent: user ? "You" : (model ?? "Assistant") });
  return el("div", { className: `message ${message.role}` }, role, body, meta);
}

function statsText({ stats, stopped, finish }) {
  const about = stats.counted ? "≈" : "";
  const rate = stats.seconds > 0 ? (stats.tokens / stats.seconds).toFixed(1) : "–";
  const parts = [`${about}${stats.tokens} tokens in ${stats.seconds.toFixed(1)} s`];
  parts.push(`${about}${rate} tokens/s`);
  if (stopped) parts.unshift("Stopped");
  if (finish === "length") parts.push("max tokens reached");
  return parts.join(" · ");
}

function fillAnswer(body, content) {
  body.innerHTML = markdown(content); // safe: markdown() escapes every character of the text first
  for (const pre of body.querySelectorAll("pre")) {
    const code = pre.querySelector("code");
    pre.append(button("Copy", (event) => copyText(code.textContent, event.currentTarget), "copy-code"));
  }
}

// Redraws the streamed answer at most once a frame.
let drawing = false;
function showAnswer(conv, answer) {
  if (drawing) return;
  drawing = true;
  requestAnimationFrame(() => {
    drawing = false;
    const body = $("messages").lastElementChild?.querySelector(".body");
    if (conv.id !== currentId || !body || conv.messages.at(-1) !== answer) return;
    const box = $("messages");
    const atBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 80;
    fillAnswer(body, answer.content);
    if (atBottom) scrollDown();
  });
}

function scrollDown() {
  $("messages").scrollTop = $("messages").scrollHeight;
}

// -- markdown -----------------------------------------------------------------------------------------------

const ESCAPES = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };
const escapeHtml = (text) => text.replace(/[&<>"']/g, (c) => ESCAPES[c]);

// Markdown to HTML: code fences, inline code, bold, italic, headings, lists, quotes, paragraphs, and links
// to http(s) URLs only. The whole text is escaped first, so the rules below can only add their own tags;
// finished pieces (code, links) are set aside as \0n\0 so later rules leave them alone.
// Lists follow CommonMark where answers need it: items separated by blank lines stay one (loose) list, an
// indented paragraph after a blank line belongs to the item above, and an ordered list keeps the number
// it starts at ("2." after a paragraph or a nested list is <ol start="2">, not a second "1.").
function markdown(source) {
  const kept = [];
  const keep = (html) => `\0${kept.push(html) - 1}\0`;
  let text = escapeHtml(source.replace(/\0/g, "").replace(/\r\n?/g, "\n"));
  // A fence still open (the answer is streaming) runs to the end.
  const fence = /^ {0,3}```([\w+#.-]*)[^\n]*\n([\s\S]*?)(?:^ {0,3}```[ \t]*$|(?![\s\S]))/gm;
  text = text.replace(fence, (_, lang, code) =>
    keep(`<pre><code${lang ? ` class="language-${lang}"` : ""}>${code.replace(/\n$/, "")}</code></pre>`),
  );
  const out = [];
  let paragraph = [];
  let block = null; // an open list or quote: {tag, items, start, loose}; a list item is a list of paragraphs
  let blank = false; // a blank line since the open list's last line
  const flush = () => {
    if (paragraph.length) out.push(`<p>${inline(paragraph.join("<br>"), keep)}</p>`);
    if (block?.tag === "blockquote") {
      out.push(`<blockquote>${inline(block.items.join("<br>"), keep)}</blockquote>`);
    } else if (block) {
      const item = (parts) =>
        block.loose ? parts.map((part) => `<p>${inline(part, keep)}</p>`).join("") : inline(parts[0], keep);
      const items = block.items.map((parts) => `<li>${item(parts)}</li>`).join("");
      const start = block.tag === "ol" && block.start !== 1 ? ` start="${block.start}"` : "";
      out.push(`<${block.tag}${start}>${items}</${block.tag}>`);
    }
    paragraph = [];
    block = null;
    blank = false;
  };
  const startBlock = (tag) => {
    if (paragraph.length || block?.tag !== tag) flush();
    block ??= { tag, items: [], start: 1, loose: false };
  };
  const inList = () => block && block.tag !== "blockquote";
  for (const line of text.split("\n")) {
    let m;
    if (/^\s*\0\d+\0\s*$/.test(line)) {
      flush();
      out.push(line.trim());
    } else if ((m = /^ {0,3}(#{1,6})\s+(.*)$/.exec(line))) {
      flush();
      out.push(`<h${m[1].length}>${inline(m[2], keep)}</h${m[1].length}>`);
    } else if (/^ {0,3}([-*_])( *\1){2,} *$/.test(line)) {
      flush();
      out.push("<hr>");
    } else if ((m = /^\s*(?:([-*+])|(\d{1,9})[.)])\s+(.*)$/.exec(line))) {
      startBlock(m[1] ? "ul" : "ol");
      if (!block.items.length && m[2]) block.start = Number(m[2]);
      if (blank) block.loose = true; // a blank line between two items
      block.items.push([m[3]]);
    } else if ((m = /^ {0,3}&gt; ?(.*)$/.exec(line))) {
      startBlock("blockquote");
      block.items.push(m[1]);
    } else if (!line.trim()) {
      if (inList()) blank = true; // the list goes on if an item or an indented paragraph comes next
      else flush();
    } else if (inList() && blank && /^\s{2,}\S/.test(line)) {
      block.items[block.items.length - 1].push(line.trim()); // the item's next paragraph
      block.loose = true;
    } else if (inList() && !blank) {
      const parts = block.items[block.items.length - 1];
      parts[parts.length - 1] += ` ${line.trim()}`; // a list item's next line
    } else {
      if (block) flush();
      paragraph.push(line);
    }
    if (line.trim()) blank = false;
  }
  flush();
  let html = out.join("\n");
  for (let i = 0; i < 3 && html.includes("\0"); i++) html = html.replace(/\0(\d+)\0/g, (_, n) => kept[n]);
  return html;
}

function inline(text, keep) {
  return text
    .replace(/`([^`\n]+)`/g, (_, code) => keep(`<code>${code}</code>`))
    .replace(/\[([^\]\n]+)\]\((https?:\/\/[^\s()\0]+)\)/g, (_, label, url) =>
      keep(`<a href="${url}" target="_blank" rel="noopener noreferrer">${label}</a>`),
    )
    .replace(/\*\*(?=\S)(.+?)(?<=\S)\*\*|__(?=\S)(.+?)(?<=\S)__/g, (_, a, b) => `<strong>${a ?? b}</strong>`)
    .replace(/\*(?=[^\s*])([^*]+?)(?<=\S)\*|(?<![\w&#])_(?=\S)([^_]+?)(?<=\S)_(?!\w)/g, (_, a, b) =>
      `<em>${a ?? b}</em>`,
    );
}

// -- wiring -------------------------------------------------------------------------------------------------

for (const name of SAMPLING) {
  $(name).value = settings[name];
  $(name).addEventListener("input", () => {
    settings[name] = $(name).value;
    saveSettings();
  });
}
$("system").value = current()?.system ?? settings.system;
$("system").addEventListener("input", () => {
  settings.system = $("system").value; // new conversations start with the last system prompt
  saveSettings();
  const conv = current();
  if (conv) {
    conv.system = settings.system;
    save();
  }
});
$("composer").addEventListener("submit", (event) => {
  event.preventDefault();
  send();
});
$("input").addEventListener("keydown", (event) => onEnter(event, send));
$("stop").addEventListener("click", () => controller?.abort());
$("regenerate").addEventListener("click", regenerate);
$("new-chat").addEventListener("click", () => {
  openConversation(null); // the conversation starts with its first message
  $("input").focus();
});
$("export").addEventListener("click", exportAll);
$("import").addEventListener("change", (event) => {
  const file = event.target.files[0];
  if (file) importFile(file);
  event.target.value = ""; // the same file again fires change again
});
$("key-form").addEventListener("submit", () => {
  sessionStorage.setItem(KEY, $("key").value.trim());
  $("key").value = "";
  loadModel(); // asks again if this key is refused too
});
// Another tab of this page saved: show its conversations (unless this one is mid-answer).
window.addEventListener("storage", (event) => {
  if (event.key !== STORE || controller) return;
  conversations = readJSON(STORE, []).map(cleanConversation).filter(Boolean);
  if (!current()) currentId = newest()?.id ?? null;
  render();
});

render();
loadModel();

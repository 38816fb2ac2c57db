/* The chat page: wires the REST client, the store, the socket and the views together.
 * Loaded as an ES module by templates/chat/index.html; no build step. */

import { Api } from "./api.js";
import { ChatStore } from "./store.js";
import { ChatSocket } from "./socket.js";
import { ThreadView, TextView } from "./render.js";
import { MarkdownView } from "./markdown.js";
import { setupTheme, setupShortcuts, setupDrawer } from "./ui.js";
import { mountConversationList, conversationLabel } from "./conversations.js";
import { mountCharacterGallery } from "./characters.js";

const root = document.getElementById("chat-app");
const PAGE_SIZE = 50;

const el = {
  title: document.getElementById("chat-title"),
  status: document.getElementById("connection-status"),
  banner: document.getElementById("banner"),
  messages: document.getElementById("messages"),
  items: document.getElementById("message-items"),
  loadOlder: document.getElementById("load-older"),
  empty: document.getElementById("empty-state"),
  composerForm: document.getElementById("composer-form"),
  composer: document.getElementById("composer"),
  send: document.getElementById("send"),
  stop: document.getElementById("stop"),
  hint: document.getElementById("composer-hint"),
  toasts: document.getElementById("toasts"),
  nav: document.getElementById("conversation-list"),
  gallery: document.getElementById("character-gallery"),
  showCharacters: document.getElementById("show-characters"),
};

const api = new Api({ root: root.getAttribute("data-api-root") || "/api/v1/" });
const store = new ChatStore();

const state = {
  current: null, // the open conversation
  openToken: 0, // bumps on every conversation switch; late responses check it
  olderUrl: null,
  limitedUntil: 0, // Date.now() until which sends are rate limited
  limitTimer: null,
  banned: null, // the ban's details once the server says so
  stopping: false, // a cancel was asked for and its end has not come yet
  wasBusy: false,
  couldAct: false,
  actChanged: false,
  characters: new Map(), // id -> character (names for titles)
};

// --- small helpers -----------------------------------------------------------------------------

function newClientId() {
  const c = window.crypto;
  if (c && typeof c.randomUUID === "function") return c.randomUUID();
  const bytes = new Uint8Array(16);
  c.getRandomValues(bytes);
  return Array.from(bytes, (b) => ("0" + b.toString(16)).slice(-2)).join("");
}

function toast(message, kind) {
  const node = document.createElement("div");
  node.className = "toast" + (kind ? " " + kind : "");
  node.textContent = message;
  node.setAttribute("data-testid", "toast");
  el.toasts.appendChild(node);
  setTimeout(() => node.remove(), 6000);
}

function showBanner(message, kind) {
  el.banner.querySelector(".banner-text").textContent = message;
  el.banner.setAttribute("data-kind", kind || "");
  el.banner.hidden = false;
}

function hideBanner() {
  el.banner.hidden = true;
}

function isNearBottom() {
  const m = el.messages;
  return m.scrollHeight - m.scrollTop - m.clientHeight < 80;
}

function scrollToBottom() {
  el.messages.scrollTop = el.messages.scrollHeight;
}

// --- views -------------------------------------------------------------------------------------

const thread = new ThreadView(
  el.items,
  {
    feedback: sendFeedback,
    report: reportMessage,
    retry: retrySend,
    regenerate,
    edit: editAndResend,
    branch: switchBranch,
    copy: copyText,
  },
  {
    contentView: (node, role) => (role === "user" ? new TextView(node) : new MarkdownView(node)),
    canAct,
  },
);
let renderedVersion = -1;

/* Bring the DOM up to the store: the thread's order, then every entry that changed. */
function flush() {
  const stick = isNearBottom();
  updateComposer(); // first: whether controls may start a reply decides how they are drawn
  if (store.threadVersion !== renderedVersion) {
    renderedVersion = store.threadVersion;
    thread.sync(store.thread);
  }
  const busy = store.busy();
  const dirty = store.takeDirty();
  for (const key of thread.setLastReply(store.lastReply())) {
    const entry = store.thread.find((e) => e.key === key);
    if (entry && !dirty.includes(entry)) dirty.push(entry);
  }
  if (busy !== state.wasBusy || state.actChanged) {
    // Whether controls that start a reply are usable changed: every message's buttons follow.
    state.wasBusy = busy;
    state.actChanged = false;
    for (const entry of store.thread) if (!dirty.includes(entry)) dirty.push(entry);
  }
  for (const entry of dirty) thread.update(entry);
  updateEmptyState();
  updateComposer();
  if (stick) scrollToBottom();
}

function updateEmptyState() {
  const has = store.thread.length > 0;
  el.empty.hidden = has;
  if (!has) {
    el.empty.textContent = state.current
      ? "No messages yet. Say hello!"
      : "Pick a conversation or start a new chat.";
  }
}

function setStatus(name, label) {
  el.status.setAttribute("data-state", name);
  el.status.querySelector(".label").textContent = label;
  updateComposer();
}

/* Controls that start a reply (send, regenerate, edit, retry) are usable now. */
function canAct() {
  return (
    !!state.current && socket.isOpen && !state.banned && Date.now() >= state.limitedUntil && !store.busy()
  );
}

function updateComposer() {
  const busy = store.busy();
  el.composer.disabled = !state.current || !!state.banned;
  el.send.disabled = !canAct() || !el.composer.value.trim();
  el.stop.hidden = !store.activeReply();
  el.stop.disabled = state.stopping;
  let hint = "";
  if (busy && store.activeReply()) {
    hint = state.stopping
      ? "Stopping…"
      : "A reply is being written: Send is off until it ends. Stop it with the Stop button or Esc.";
  } else if (busy) {
    hint = "Sending…";
  }
  if (el.hint.textContent !== hint) el.hint.textContent = hint;
  el.hint.hidden = !hint;
  const act = canAct();
  if (act !== state.couldAct) {
    state.couldAct = act;
    state.actChanged = true;
  }
}

// --- limits and bans, in plain words -------------------------------------------------------------

const LIMIT_WORDS = {
  minute: "messages per minute",
  hour: "messages per hour",
  day: "messages per day",
  in_flight: "replies at once",
  tokens: "daily token allowance",
};

function waitText(seconds) {
  seconds = Math.max(1, Math.ceil(seconds));
  if (seconds < 120) return seconds + " s";
  if (seconds < 7200) return Math.ceil(seconds / 60) + " min";
  return Math.ceil(seconds / 3600) + " h";
}

// A send was refused by a rate limit: say which, and count down until it lifts.
function rateLimited(limit, retryAfter) {
  const what = LIMIT_WORDS[limit] || "sending limit";
  state.limitedUntil = Date.now() + Math.max(1, retryAfter || 1) * 1000;
  if (state.limitTimer) clearInterval(state.limitTimer);
  const tick = () => {
    const left = (state.limitedUntil - Date.now()) / 1000;
    if (left <= 0) {
      clearInterval(state.limitTimer);
      state.limitTimer = null;
      hideBanner();
      updateComposer();
      flush();
      return;
    }
    showBanner(
      "Slow down: you can send again in " + waitText(left) + ". You have reached your limit of " + what + ".",
      "rate-limited",
    );
  };
  tick();
  state.limitTimer = setInterval(tick, 1000);
  updateComposer();
  flush();
}

// The account is suspended: say until when and why; nothing can be sent meanwhile.
function banned(details) {
  details = details || {};
  state.banned = details;
  socket.stop();
  const when =
    details.permanent || !details.until
      ? "permanently"
      : "until " + new Date(details.until).toLocaleString();
  const why = details.reason ? " Reason: " + details.reason : "";
  showBanner("Your account is suspended " + when + "." + why, "banned");
  setStatus("closed", "Suspended");
}

// --- socket ------------------------------------------------------------------------------------

const socket = new ChatSocket({
  path: root.getAttribute("data-ws-path") || "/ws/conversations/",
  onFrame: handleFrame,
  onStatus: setStatus,
  onOpen({ resumed }) {
    hideBanner();
    if (resumed) {
      // Catch up on anything that happened while away, then resume the streams.
      loadMessages(state.openToken, true).then(resumeUnfinished, resumeUnfinished);
    } else {
      resumeUnfinished();
    }
  },
  onLost() {
    store.failPending("Not sent: the connection was lost.");
    flush();
  },
  onFinalClose(code) {
    if (code === 4401) {
      setStatus("closed", "Not signed in");
      showBanner("Your session has ended. Reload the page to log in again.");
    } else if (code === 4403) {
      if (!state.banned) banned({});
    } else {
      setStatus("closed", "Not found");
      showBanner("This conversation does not exist or is not yours.");
    }
  },
});

function resumeUnfinished() {
  for (const frame of store.resumeFrames()) socket.send(frame);
}

function handleFrame(frame) {
  switch (frame.type) {
    case "message.created":
      if (frame.message) {
        const msg = Object.assign({}, frame.message);
        if (frame.client_id && !msg.client_id && msg.role === "user") msg.client_id = frame.client_id;
        const result = store.upsert(msg);
        if (result && result.needsReload) loadMessages(state.openToken, true);
        if (state.current && result) {
          conversations.upsert({ id: state.current.id, last_activity_at: msg.created_at });
        }
      }
      break;
    case "generation.started":
      store.started(frame);
      break;
    case "generation.delta":
      applyDelta(frame);
      return;
    case "generation.completed":
      store.ended(frame, "completed");
      state.stopping = false;
      break;
    case "generation.cancelled":
      store.ended(frame, "cancelled");
      state.stopping = false;
      break;
    case "generation.failed":
      state.stopping = false;
      if (!store.failed(frame)) {
        toast("The reply could not be generated: " + ((frame.error && frame.error.message) || "unknown error"), "error");
      }
      break;
    case "safety.flagged":
      store.flagged(frame);
      break;
    case "conversation.updated":
      updateConversation(frame.conversation);
      break;
    case "rate_limited":
      store.failPending("Not sent: you have reached a sending limit; try again when it lifts.", {
        code: "rate_limited",
      });
      rateLimited(frame.limit, frame.retry_after);
      break;
    case "error": {
      const err = frame.error || {};
      if (err.code === "already_finished") {
        state.stopping = false; // a stop that came too late: the reply had ended
      } else if (err.code === "content_blocked") {
        store.blockPending(err.details);
        toast("Your message was blocked by the content filter.", "error");
      } else if (err.code === "banned") {
        store.failPending("Not sent: your account is suspended.", { retryable: false });
        banned(err.details);
      } else {
        store.failPending("Not sent: " + (err.message || err.code || "error"));
        toast(err.message || err.code || "Something went wrong.", "error");
      }
      break;
    }
    default:
      return;
  }
  flush();
}

function applyDelta(frame) {
  const stick = isNearBottom();
  const result = store.applyDelta(frame);
  if (result.gapAfter !== undefined) {
    socket.send({ type: "stream.resume", generation_id: frame.generation_id, after_seq: result.gapAfter });
  }
  if (result.entry) thread.append(result.entry, result.text);
  if (store.dirty.size) flush();
  else if (stick) scrollToBottom();
}

// --- conversations -------------------------------------------------------------------------------

async function characterName(characterId) {
  if (characterId == null) return null;
  if (!state.characters.has(characterId)) {
    try {
      state.characters.set(characterId, await api.getCharacter(characterId));
    } catch (e) {
      return null;
    }
  }
  const c = state.characters.get(characterId);
  return c ? c.name : null;
}

async function drawTitle() {
  const conv = state.current;
  if (!conv) {
    el.title.textContent = "No conversation open";
    return;
  }
  if (!conv.title && !(conv.character && conv.character.name)) {
    const name = await characterName(conv.character_id);
    if (state.current !== conv) return;
    if (name) conv.character = Object.assign({}, conv.character, { name });
  }
  el.title.textContent = conversationLabel(conv);
}

function updateConversation(conv) {
  // The server changed a conversation (its automatic title): the list and the header follow.
  if (!conv || conv.id == null) return;
  conversations.upsert(conv);
  if (state.current && state.current.id === conv.id) {
    state.current = Object.assign({}, state.current, conv);
    drawTitle();
  }
}

async function loadMessages(token, merge, { keepScroll = false } = {}) {
  const conv = state.current;
  const data = await api.listMessages(conv.id, { limit: PAGE_SIZE });
  if (token !== state.openToken) return;
  const results = (data && data.results) || [];
  const before = store.thread.length ? store.thread[0] : null;
  store.setThread(results);
  const joined = before !== null && store.thread[0] === before && results.length && store.thread[0].msg.id !== results[0].id;
  if (!merge || !joined) state.olderUrl = (data && data.next) || null;
  el.loadOlder.hidden = !state.olderUrl;
  const top = el.messages.scrollTop;
  flush();
  if (keepScroll) el.messages.scrollTop = top;
  else if (!merge) scrollToBottom();
}

async function loadOlder() {
  if (!state.olderUrl || !state.current) return;
  const token = state.openToken;
  el.loadOlder.disabled = true;
  try {
    const data = await api.listMessages(state.current.id, { cursor: state.olderUrl });
    if (token !== state.openToken) return;
    const before = el.messages.scrollHeight;
    store.prependOlder((data && data.results) || []);
    state.olderUrl = (data && data.next) || null;
    el.loadOlder.hidden = !state.olderUrl;
    flush();
    el.messages.scrollTop += el.messages.scrollHeight - before;
  } catch (err) {
    toast("Could not load older messages: " + err.message, "error");
  } finally {
    el.loadOlder.disabled = false;
  }
}

async function openConversation(conv) {
  socket.close();
  state.stopping = false;
  store.reset(conv.id);
  thread.clear();
  renderedVersion = -1;
  hideBanner();
  state.current = conv;
  state.olderUrl = null;
  el.loadOlder.hidden = true;
  const token = ++state.openToken;
  if (window.location.hash !== "#conversation-" + conv.id) {
    history.replaceState(null, "", "#conversation-" + conv.id);
  }
  conversations.setActive(conv.id);
  drawTitle();
  flush();
  setStatus("connecting", "Loading…");
  try {
    await loadMessages(token, false);
    if (token !== state.openToken) return;
    socket.open(conv.id);
    el.composer.focus();
  } catch (err) {
    if (token !== state.openToken) return;
    setStatus("closed", "Not connected");
    if (err.code === "banned") banned(err.details);
    else if (err.status === 404) showBanner("This conversation does not exist or is not yours.");
    else if (err.status === 401 || err.status === 403) {
      showBanner("Your session has ended. Reload the page to log in again.");
    } else showBanner("Could not load messages: " + err.message);
  }
}

async function openById(id) {
  let conv = { id, title: "", character_id: null };
  const token = state.openToken;
  try {
    conv = await api.getConversation(id);
  } catch (err) {
    /* openConversation says what is wrong */
  }
  if (token !== state.openToken) return;
  openConversation(conv);
}

function openFromHash() {
  const match = /^#conversation-(\d+)$/.exec(window.location.hash);
  if (!match) return false;
  const id = parseInt(match[1], 10);
  if (state.current && state.current.id === id) return true;
  openById(id);
  return true;
}

async function startChat(characterId) {
  try {
    const conv = await api.createConversation(characterId);
    closeGallery();
    drawer.close();
    conversations.upsert(conv);
    openConversation(conv);
  } catch (err) {
    if (err.code === "banned") banned(err.details);
    else toast("Could not start a chat: " + err.message, "error");
  }
}

// --- messages: sending and the controls ------------------------------------------------------------

function sendMessage() {
  const text = el.composer.value;
  if (!text.trim() || !canAct()) return;
  const clientId = newClientId();
  store.addPending({ content: text, client_id: clientId, conversation_id: state.current.id });
  flush();
  scrollToBottom();
  socket.send({ type: "message.send", content: text, client_id: clientId });
  el.composer.value = "";
  updateComposer();
  el.composer.focus();
}

function retrySend(entry) {
  if (!socket.isOpen) {
    toast("Not connected yet; try again in a moment.", "error");
    return;
  }
  if (!canAct()) return;
  store.resend(entry);
  flush();
  socket.send({ type: "message.send", content: entry.msg.content, client_id: entry.msg.client_id });
}

// A REST call that starts a reply was refused: say why in words.
function refused(err, what) {
  if (err.code === "rate_limited") rateLimited(err.details.limit, err.details.retry_after);
  else if (err.code === "banned") banned(err.details);
  else if (err.code === "content_blocked") toast("Blocked by the content filter: " + what + " was not sent.", "error");
  else toast("Could not " + what + ": " + err.message, "error");
}

async function regenerate(entry) {
  if (entry.msg.id == null || !canAct()) return;
  try {
    const answer = await api.regenerate(entry.msg.id);
    if (answer && answer.assistant_message) store.upsert(answer.assistant_message);
  } catch (err) {
    refused(err, "write another reply");
  }
  flush();
  scrollToBottom();
}

async function editAndResend(entry, text) {
  if (entry.msg.id == null || !canAct()) return;
  try {
    const answer = await api.editMessage(entry.msg.id, text);
    for (const msg of [answer.user_message, answer.assistant_message]) if (msg) store.upsert(msg);
    thread.closeEditor(entry);
  } catch (err) {
    refused(err, "send the edit");
    if (err.details && err.details.message_id != null) loadMessages(state.openToken, true);
  }
  flush();
  scrollToBottom();
}

/* ‹ › on a message with siblings: show the branch through the sibling `delta` away, redrawn in
 * place (the switched message stays where it was on the screen). */
async function switchBranch(entry, delta) {
  const sib = entry.msg.siblings;
  if (!sib || !state.current || store.busy()) return;
  const target = sib.ids[sib.position - 1 + delta];
  if (target == null) return;
  const token = state.openToken;
  const node = el.items.querySelector('[data-id="' + entry.msg.id + '"]');
  const top = node ? node.getBoundingClientRect().top : null;
  try {
    const conv = await api.switchBranch(state.current.id, target);
    if (token !== state.openToken) return;
    if (conv) state.current = Object.assign({}, state.current, conv);
    await loadMessages(token, true, { keepScroll: true });
  } catch (err) {
    toast("Could not switch to that alternative: " + err.message, "error");
    return;
  }
  const moved = el.items.querySelector('[data-id="' + target + '"]');
  if (moved && top !== null) el.messages.scrollTop += moved.getBoundingClientRect().top - top;
  if (moved) {
    const again = moved.querySelector(delta < 0 ? '[data-testid="branch-prev"]' : '[data-testid="branch-next"]');
    if (again && document.activeElement && document.activeElement.closest(".branch")) again.focus();
  }
}

/* The arrow keys, as in SillyTavern: swipe the last message between its alternatives; right
 * on the last reply's last alternative writes a new one. */
function swipe(delta) {
  const last = store.thread[store.thread.length - 1];
  if (!last || store.busy()) return;
  const sib = last.msg.siblings;
  const position = sib ? sib.position : 1;
  const total = sib ? sib.total : 1;
  if (delta < 0 && position > 1) switchBranch(last, -1);
  else if (delta > 0 && position < total) switchBranch(last, 1);
  else if (delta > 0 && last.msg.role === "assistant" && last.msg.parent_id != null) regenerate(last);
}

function stopReply() {
  const entry = store.activeReply();
  if (!entry || state.stopping) return;
  const gen = entry.msg.generation_id;
  if (gen == null) return;
  state.stopping = true;
  updateComposer();
  if (!socket.send({ type: "generation.cancel", generation_id: gen })) {
    api.cancelGeneration(gen).then(
      (answer) => {
        if (answer && answer.message) store.ended({ generation_id: gen, message: answer.message }, "cancelled");
        state.stopping = false;
        flush();
      },
      (err) => {
        state.stopping = false;
        if (err.code !== "already_finished") toast("Could not stop the reply: " + err.message, "error");
        flush();
      },
    );
  }
}

async function copyText(text) {
  try {
    await navigator.clipboard.writeText(text);
  } catch (e) {
    // No clipboard API (an insecure origin): the old way.
    const area = document.createElement("textarea");
    area.value = text;
    area.setAttribute("readonly", "");
    area.style.position = "fixed";
    area.style.opacity = "0";
    document.body.appendChild(area);
    area.select();
    document.execCommand("copy");
    area.remove();
  }
  toast("Copied");
}

async function sendFeedback(entry, rating) {
  if (entry.msg.id == null) return;
  try {
    await api.feedback(entry.msg.id, rating);
    entry.rating = rating;
    store.touch(entry);
    flush();
  } catch (err) {
    toast("Could not save feedback: " + err.message, "error");
  }
}

async function reportMessage(entry) {
  if (entry.msg.id == null) return;
  const reason = window.prompt("Why are you reporting this reply?");
  if (reason == null || !reason.trim()) return;
  try {
    await api.report(entry.msg.id, reason.trim());
    entry.reported = true;
    toast("Thank you: the moderators will review this reply.");
  } catch (err) {
    if (err.code === "already_reported") {
      entry.reported = true;
      toast("You have already reported this reply.");
    } else {
      toast("Could not send the report: " + err.message, "error");
    }
  }
  store.touch(entry);
  flush();
}

// --- sidebar modules -------------------------------------------------------------------------------

const conversations = mountConversationList(el.nav, {
  api,
  onOpen(id) {
    closeGallery();
    drawer.close();
    if (!(state.current && state.current.id === id)) openById(id);
  },
  getActiveId: () => (state.current ? state.current.id : null),
  onChanged: updateConversation,
});

function closeGallery() {
  el.gallery.hidden = true;
  el.showCharacters.setAttribute("aria-expanded", "false");
}

const gallery = mountCharacterGallery(el.gallery, {
  api,
  onStartChat: startChat,
  onClose() {
    closeGallery();
    el.showCharacters.focus();
  },
});

el.showCharacters.addEventListener("click", () => {
  drawer.close();
  el.showCharacters.setAttribute("aria-expanded", "true");
  gallery.open();
});

// --- wiring ----------------------------------------------------------------------------------------

el.loadOlder.addEventListener("click", loadOlder);
// Copy buttons of code blocks (made by markdown.js): one listener for all of them.
el.items.addEventListener("click", (event) => {
  const button = event.target.closest && event.target.closest(".copy-code");
  if (!button) return;
  const pre = button.closest(".code-block").querySelector("pre");
  if (pre) copyText(pre.textContent.replace(/\n$/, ""));
});
el.stop.addEventListener("click", stopReply);
setupTheme(document.getElementById("theme-toggle"));
const drawer = setupDrawer(document.getElementById("sidebar-toggle"), document.getElementById("sidebar"));
setupShortcuts({
  overlay: document.getElementById("shortcuts-overlay"),
  button: document.getElementById("shortcuts-button"),
  composer: el.composer,
  stop: () => {
    if (store.activeReply()) {
      stopReply();
      return true;
    }
    return false;
  },
  swipe,
});
el.banner.querySelector(".banner-close").addEventListener("click", hideBanner);
el.composerForm.addEventListener("submit", (event) => {
  event.preventDefault();
  sendMessage();
});
el.composer.addEventListener("input", updateComposer);
el.composer.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    sendMessage();
  }
});

// A link to #conversation-<id> (a search hit) opens it.
window.addEventListener("hashchange", openFromHash);

updateComposer();
updateEmptyState();
conversations.refresh().catch((err) => {
  if (err.code === "banned") banned(err.details);
  else toast("Could not load conversations: " + err.message, "error");
});
openFromHash();

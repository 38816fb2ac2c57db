/* The chat page: wires the REST client, the store, the socket and the views together.
 * Loaded as an ES module by templates/chat/index.html; no build step. */

import { Api } from "./api.js";
import { ChatStore } from "./store.js";
import { ChatSocket } from "./socket.js";
import { ThreadView, TextView } from "./render.js";
import { MarkdownView } from "./markdown.js";
import { setupTheme, setupShortcuts, setupDrawer } from "./ui.js";
import { Notices, limitText, banText } from "./notices.js";
import { createControls } from "./controls.js";
import { mountConversationList, conversationLabel } from "./conversations.js";
import { mountCharacterGallery } from "./characters.js";

const root = document.getElementById("chat-app");
const PAGE_SIZE = 50;

const el = {
  title: document.getElementById("chat-title"),
  avatar: document.getElementById("chat-avatar"),
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

const notices = new Notices({ banner: el.banner, toasts: el.toasts });
const toast = (message, kind) => notices.toast(message, kind);
const showBanner = (message, kind) => notices.show(message, kind);
const hideBanner = () => notices.hide();

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
    feedback: (entry, rating) => controls.sendFeedback(entry, rating),
    report: (entry) => controls.reportMessage(entry),
    retry: retrySend,
    regenerate: (entry) => controls.regenerate(entry),
    edit: (entry, text) => controls.editAndResend(entry, text),
    branch: (entry, delta) => controls.switchBranch(entry, delta),
    copy: (text) => controls.copyText(text),
  },
  {
    contentView: (node, role) => (role === "user" ? new TextView(node) : new MarkdownView(node)),
    canAct,
    busy: () => store.busy(),
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
  flush(); // the controls follow whether the socket is open
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

// A send was refused by a rate limit: say which, and count down until it lifts.
function rateLimited(limit, retryAfter) {
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
    showBanner(limitText(limit, left), "rate-limited");
  };
  tick();
  state.limitTimer = setInterval(tick, 1000);
  updateComposer();
  flush();
}

// The account is suspended: say until when and why; nothing can be sent meanwhile.
function banned(details) {
  state.banned = details || {};
  socket.stop();
  showBanner(banText(state.banned), "banned");
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
    } else if (notices.shown !== "deleted") {
      setStatus("closed", "Not found");
      showBanner("This conversation does not exist or is not yours.");
    }
  },
});

const controls = createControls({
  api,
  store,
  socket,
  state,
  el,
  thread,
  flush,
  canAct,
  updateComposer,
  loadMessages,
  scrollToBottom,
  toast,
  rateLimited,
  banned,
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
    case "generation.retrying": {
      // A provider failed before the first token and is tried again: say so.
      const entry = store.entryForGeneration(frame.generation_id);
      if (entry) {
        entry.retrying = frame.attempt || true;
        store.touch(entry);
      }
      break;
    }
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
    case "conversation.deleted":
      // Deleted (here or in another tab): the socket closes with 4404 next; say it plainly.
      socket.stop();
      showBanner("This conversation was deleted.", "deleted");
      setStatus("closed", "Deleted");
      conversations.refresh().catch(() => {});
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
  const p = globalThis.__chatPerf; // bench/page.py's hook: the handler's time per delta
  const t0 = p ? performance.now() : 0;
  applyDeltaNow(frame);
  if (p) p.deltas.push([frame.seq, performance.now() - t0]);
}

// Deltas touch no layout: the view draws once per frame, and the list follows the bottom then
// (unless the reader scrolled up).
let following = true;
let followScheduled = false;
el.messages.addEventListener("scroll", () => (following = isNearBottom()), { passive: true });

function followBottom() {
  if (followScheduled) return;
  followScheduled = true;
  requestAnimationFrame(() => {
    followScheduled = false;
    if (following) scrollToBottom();
  });
}

function applyDeltaNow(frame) {
  const result = store.applyDelta(frame);
  if (result.gapAfter !== undefined) {
    socket.send({ type: "stream.resume", generation_id: frame.generation_id, after_seq: result.gapAfter });
  }
  if (result.entry) thread.append(result.entry, result.text);
  if (store.dirty.size) flush();
  else followBottom();
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
    el.avatar.hidden = true;
    return;
  }
  if (!conv.title && !(conv.character && conv.character.name)) {
    const name = await characterName(conv.character_id);
    if (state.current !== conv) return;
    if (name) conv.character = Object.assign({}, conv.character, { name });
  }
  el.title.textContent = conversationLabel(conv);
  // The character's picture (the API gives conversations their character's avatar_url).
  const avatar = (conv.character && conv.character.avatar_url) || null;
  if (avatar) el.avatar.src = avatar;
  el.avatar.hidden = !avatar;
  thread.avatar = avatar;
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

// No conversation open: the page as a new user first sees it (after the last one is deleted).
function closeConversation() {
  socket.close();
  state.stopping = false;
  state.openToken += 1;
  store.reset(null);
  thread.clear();
  renderedVersion = -1;
  hideBanner();
  state.current = null;
  state.olderUrl = null;
  el.loadOlder.hidden = true;
  history.replaceState(null, "", window.location.pathname + window.location.search);
  conversations.setActive(null);
  drawTitle();
  setStatus("idle", "Not connected");
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
  onDeleted(id, { wasActive, neighbour }) {
    if (!wasActive) return;
    // The open conversation is gone: open the next one, or none, rather than leave a dead thread.
    if (neighbour == null) closeConversation();
    else {
      conversations.setActive(neighbour);
      openById(neighbour);
    }
  },
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
  if (pre) controls.copyText(pre.textContent.replace(/\n$/, ""));
});
el.stop.addEventListener("click", () => controls.stopReply());
setupTheme(document.getElementById("theme-toggle"));
const drawer = setupDrawer(document.getElementById("sidebar-toggle"), document.getElementById("sidebar"));
setupShortcuts({
  overlay: document.getElementById("shortcuts-overlay"),
  button: document.getElementById("shortcuts-button"),
  composer: el.composer,
  stop: () => {
    if (store.activeReply()) {
      controls.stopReply();
      return true;
    }
    return false;
  },
  swipe: (delta) => controls.swipe(delta),
});
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

/* Message Service chat client: vanilla JS, no build step.
 *
 * REST (under /api/v1/) loads characters, conversations and message history; a websocket per open
 * conversation sends messages and streams the assistant's reply. Message text is always rendered
 * with textContent, never as HTML.
 */
(function () {
  "use strict";

  var root = document.getElementById("chat-app");
  if (!root) return;

  var API_ROOT = root.getAttribute("data-api-root") || "/api/v1/";
  var WS_PATH = root.getAttribute("data-ws-path") || "/ws/conversations/";
  var PAGE_SIZE = 50;
  var PING_INTERVAL_MS = 25000;
  var MAX_BACKOFF_MS = 15000;
  var FINAL_STATUSES = ["completed", "failed", "cancelled", "blocked"];

  var el = {
    characterSelect: document.getElementById("character-select"),
    newChatForm: document.getElementById("new-chat-form"),
    newChat: document.getElementById("new-chat"),
    conversationList: document.getElementById("conversation-list"),
    moreConversations: document.getElementById("more-conversations"),
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
    toasts: document.getElementById("toasts")
  };

  var state = {
    characters: new Map(), // id -> character
    conversations: [], // newest activity first
    conversationsNext: null,
    current: null, // the open conversation
    openToken: 0, // bumps on every conversation switch; late responses check it
    messages: new Map(), // message id -> entry {msg, el, parts, error}
    pending: new Map(), // client_id -> entry of a user message not yet confirmed
    genToMessage: new Map(), // generation_id -> message id
    lastSeq: new Map(), // generation_id -> highest delta seq applied
    bufferedDeltas: new Map(), // generation_id -> [delta frames] seen before we knew their message
    olderUrl: null,
    ws: null,
    socketToken: 0,
    reconnectAttempts: 0,
    reconnectTimer: null,
    pingTimer: null,
    needsResync: false,
    stopped: false, // true after a close that must not reconnect (4401/4403/4404)
    limitedUntil: 0, // Date.now() until which sends are rate limited
    limitTimer: null,
    banned: null // the ban's details {until, permanent, reason} once the server says so
  };

  // --- helpers --------------------------------------------------------------------------------

  function getCookie(name) {
    var parts = document.cookie ? document.cookie.split(";") : [];
    for (var i = 0; i < parts.length; i++) {
      var part = parts[i].trim();
      if (part.substring(0, name.length + 1) === name + "=") {
        return decodeURIComponent(part.substring(name.length + 1));
      }
    }
    return null;
  }

  function newClientId() {
    var c = window.crypto;
    if (c && typeof c.randomUUID === "function") return c.randomUUID();
    if (c && typeof c.getRandomValues === "function") {
      var bytes = new Uint8Array(16);
      c.getRandomValues(bytes);
      return Array.prototype.map.call(bytes, function (b) {
        return ("0" + b.toString(16)).slice(-2);
      }).join("");
    }
    return Date.now().toString(36) + "-" + Math.random().toString(36).slice(2) + Math.random().toString(36).slice(2);
  }

  function sameOriginPath(url) {
    // Pagination links are absolute; keep only the path so a proxy's scheme/host cannot bite.
    var u = new URL(url, window.location.href);
    return u.pathname + u.search;
  }

  function ApiError(status, code, message, details) {
    this.name = "ApiError";
    this.status = status;
    this.code = code;
    this.message = message;
    this.details = details;
  }
  ApiError.prototype = Object.create(Error.prototype);

  function api(path, options) {
    options = options || {};
    var method = options.method || "GET";
    var headers = { Accept: "application/json" };
    var init = { method: method, headers: headers, credentials: "same-origin" };
    if (options.body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(options.body);
    }
    if (method !== "GET" && method !== "HEAD") {
      var token = getCookie("csrftoken");
      if (token) headers["X-CSRFToken"] = token;
    }
    var url = path.charAt(0) === "/" ? path : API_ROOT + path;
    return fetch(url, init).then(function (res) {
      return res.text().then(function (text) {
        var data = null;
        if (text) {
          try { data = JSON.parse(text); } catch (e) { data = null; }
        }
        if (!res.ok) {
          var err = (data && data.error) || {};
          throw new ApiError(res.status, err.code || "http_" + res.status,
            err.message || res.statusText || "Request failed", err.details);
        }
        return data;
      });
    });
  }

  function formatTime(iso) {
    if (!iso) return "";
    var d = new Date(iso);
    if (isNaN(d.getTime())) return "";
    var now = new Date();
    if (d.toDateString() === now.toDateString()) {
      return d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
    }
    return d.toLocaleDateString([], { month: "short", day: "numeric" }) + " " +
      d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  }

  function make(tag, className, text) {
    var node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = text;
    return node;
  }

  function toast(message, kind) {
    var node = make("div", "toast" + (kind ? " " + kind : ""), message);
    node.setAttribute("data-testid", "toast");
    el.toasts.appendChild(node);
    setTimeout(function () { node.remove(); }, 6000);
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
    var m = el.messages;
    return m.scrollHeight - m.scrollTop - m.clientHeight < 80;
  }

  function scrollToBottom() {
    el.messages.scrollTop = el.messages.scrollHeight;
  }

  // --- connection status ----------------------------------------------------------------------

  function setStatus(stateName, label) {
    el.status.setAttribute("data-state", stateName);
    el.status.querySelector(".label").textContent = label;
    updateComposer();
  }

  function socketOpen() {
    return !!(state.ws && state.ws.readyState === WebSocket.OPEN);
  }

  function updateComposer() {
    el.composer.disabled = !state.current || !!state.banned;
    el.send.disabled = !(state.current && socketOpen()) || !!state.banned ||
      Date.now() < state.limitedUntil;
  }

  // --- limits and bans, in plain words ----------------------------------------------------------

  var LIMIT_WORDS = {
    minute: "messages per minute",
    hour: "messages per hour",
    day: "messages per day",
    in_flight: "replies at once",
    tokens: "daily token allowance"
  };

  function waitText(seconds) {
    seconds = Math.max(1, Math.ceil(seconds));
    if (seconds < 120) return seconds + " s";
    if (seconds < 7200) return Math.ceil(seconds / 60) + " min";
    return Math.ceil(seconds / 3600) + " h";
  }

  // A send was refused by a rate limit: say which, and count down until it lifts.
  function rateLimited(limit, retryAfter) {
    var what = LIMIT_WORDS[limit] || "sending limit";
    state.limitedUntil = Date.now() + Math.max(1, retryAfter || 1) * 1000;
    if (state.limitTimer) clearInterval(state.limitTimer);
    function tick() {
      var left = (state.limitedUntil - Date.now()) / 1000;
      if (left <= 0) {
        clearInterval(state.limitTimer);
        state.limitTimer = null;
        hideBanner();
        updateComposer();
        return;
      }
      showBanner("You have reached your limit of " + what + ". You can send again in " +
        waitText(left) + ".", "rate-limited");
    }
    tick();
    state.limitTimer = setInterval(tick, 1000);
    updateComposer();
  }

  // The account is suspended: say until when and why; nothing can be sent meanwhile.
  function banned(details) {
    details = details || {};
    state.banned = details;
    state.stopped = true;
    var when = details.permanent || !details.until
      ? "permanently"
      : "until " + new Date(details.until).toLocaleString();
    var why = details.reason ? " Reason: " + details.reason : "";
    showBanner("Your account is suspended " + when + "." + why, "banned");
    setStatus("closed", "Suspended");
  }

  // --- characters -----------------------------------------------------------------------------

  function loadCharacters() {
    var all = [];
    function page(path, depth) {
      return api(path).then(function (data) {
        all = all.concat((data && data.results) || []);
        if (data && data.next && depth < 20) return page(sameOriginPath(data.next), depth + 1);
        return all;
      });
    }
    return page("characters/", 0).then(function (characters) {
      el.characterSelect.textContent = "";
      characters.forEach(function (c) {
        state.characters.set(c.id, c);
        var option = make("option", null, c.name);
        option.value = String(c.id);
        if (c.description) option.title = c.description;
        el.characterSelect.appendChild(option);
      });
      if (!characters.length) {
        var none = make("option", null, "No characters available");
        none.value = "";
        el.characterSelect.appendChild(none);
      }
      el.newChat.disabled = !characters.length;
      renderConversations(); // names may now be known
    }).catch(function (err) {
      el.characterSelect.textContent = "";
      var failed = make("option", null, "Could not load characters");
      failed.value = "";
      el.characterSelect.appendChild(failed);
      if (err.code === "banned") banned(err.details);
      else toast("Could not load characters: " + err.message, "error");
    });
  }

  // --- conversations --------------------------------------------------------------------------

  function conversationTitle(conv) {
    if (conv.title) return conv.title;
    var character = state.characters.get(conv.character_id);
    if (character) return "Chat with " + character.name;
    return "Conversation #" + conv.id;
  }

  function renderConversations() {
    el.conversationList.textContent = "";
    if (!state.conversations.length) {
      var empty = make("li", "muted small", "No conversations yet.");
      empty.setAttribute("data-testid", "conversation-empty");
      el.conversationList.appendChild(empty);
    }
    state.conversations.forEach(function (conv) {
      var li = make("li");
      li.setAttribute("data-testid", "conversation");
      li.setAttribute("data-id", String(conv.id));
      if (state.current && state.current.id === conv.id) li.className = "active";
      var button = make("button");
      button.type = "button";
      button.appendChild(make("span", "conv-title", conversationTitle(conv)));
      var character = state.characters.get(conv.character_id);
      var meta = [character ? character.name : null, formatTime(conv.last_activity_at || conv.created_at)]
        .filter(Boolean).join(" · ");
      button.appendChild(make("span", "conv-meta", meta));
      button.addEventListener("click", function () { openConversation(conv); });
      li.appendChild(button);
      el.conversationList.appendChild(li);
    });
    el.moreConversations.hidden = !state.conversationsNext;
  }

  function addConversations(list) {
    list.forEach(function (conv) {
      var existing = state.conversations.findIndex(function (c) { return c.id === conv.id; });
      if (existing >= 0) state.conversations[existing] = conv;
      else state.conversations.push(conv);
    });
  }

  function loadConversations(path) {
    return api(path || "conversations/").then(function (data) {
      addConversations((data && data.results) || []);
      state.conversationsNext = data && data.next ? sameOriginPath(data.next) : null;
      renderConversations();
    }).catch(function (err) {
      toast("Could not load conversations: " + err.message, "error");
    });
  }

  function bumpConversation(conversationId, when) {
    var index = state.conversations.findIndex(function (c) { return c.id === conversationId; });
    if (index < 0) return;
    var conv = state.conversations[index];
    if (when) conv.last_activity_at = when;
    state.conversations.splice(index, 1);
    state.conversations.unshift(conv);
    renderConversations();
  }

  function updateConversation(conv) {
    // The server changed a conversation (its automatic title): the list and the header follow.
    if (!conv || conv.id == null) return;
    var known = state.conversations.find(function (c) { return c.id === conv.id; });
    if (known) known.title = conv.title;
    if (state.current && state.current.id === conv.id) {
      state.current.title = conv.title;
      el.title.textContent = conversationTitle(state.current);
    }
    renderConversations();
  }

  function createConversation(event) {
    event.preventDefault();
    var characterId = parseInt(el.characterSelect.value, 10);
    if (!characterId) return;
    el.newChat.disabled = true;
    api("conversations/", { method: "POST", body: { character_id: characterId } })
      .then(function (conv) {
        state.conversations.unshift(conv);
        renderConversations();
        openConversation(conv);
      })
      .catch(function (err) { toast("Could not start a chat: " + err.message, "error"); })
      .then(function () { el.newChat.disabled = !state.characters.size; });
  }

  // --- messages -------------------------------------------------------------------------------

  function statusRank(status) {
    if (status === "sending" || status === "queued") return 0;
    if (status === "streaming") return 1;
    return 2;
  }

  // Feather icons' thumbs (MIT), drawn with DOM calls: no emoji font needed.
  var THUMB_UP = "M14 9V5a3 3 0 0 0-3-3l-4 9v11h11.28a2 2 0 0 0 2-1.7l1.38-9a2 2 0 0 0-2-2.3zM7 22H4a2 2 0 0 1-2-2v-7a2 2 0 0 1 2-2h3";
  var THUMB_DOWN = "M10 15v4a3 3 0 0 0 3 3l4-9V2H5.72a2 2 0 0 0-2 1.7l-1.38 9a2 2 0 0 0 2 2.3zm7-13h2.67A2.31 2.31 0 0 1 22 4v7a2.31 2.31 0 0 1-2.33 2H17";

  function thumbIcon(d) {
    var ns = "http://www.w3.org/2000/svg";
    var svg = document.createElementNS(ns, "svg");
    svg.setAttribute("viewBox", "0 0 24 24");
    svg.setAttribute("fill", "none");
    svg.setAttribute("stroke", "currentColor");
    svg.setAttribute("stroke-width", "2");
    svg.setAttribute("stroke-linecap", "round");
    svg.setAttribute("stroke-linejoin", "round");
    svg.setAttribute("aria-hidden", "true");
    var path = document.createElementNS(ns, "path");
    path.setAttribute("d", d);
    svg.appendChild(path);
    return svg;
  }

  function buildMessageElement() {
    var node = make("div", "msg");
    node.setAttribute("data-testid", "message");
    var bubble = make("div", "bubble");
    var content = make("div", "content");
    content.setAttribute("data-testid", "message-content");
    var error = make("div", "error");
    error.setAttribute("data-testid", "message-error");
    error.hidden = true;
    bubble.appendChild(content);
    bubble.appendChild(error);
    var metaRow = make("div", "meta-row");
    var meta = make("span", "meta");
    meta.setAttribute("data-testid", "message-meta");
    var feedback = make("span", "feedback");
    feedback.hidden = true;
    var up = make("button");
    up.appendChild(thumbIcon(THUMB_UP));
    up.type = "button";
    up.title = "Good reply";
    up.setAttribute("aria-label", "Thumbs up");
    up.setAttribute("data-testid", "feedback-up");
    var down = make("button");
    down.appendChild(thumbIcon(THUMB_DOWN));
    down.type = "button";
    down.title = "Bad reply";
    down.setAttribute("aria-label", "Thumbs down");
    down.setAttribute("data-testid", "feedback-down");
    feedback.appendChild(up);
    feedback.appendChild(down);
    var report = make("button", "link-button report", "Report");
    report.type = "button";
    report.title = "Report this reply to the moderators";
    report.setAttribute("data-testid", "report");
    report.hidden = true;
    metaRow.appendChild(meta);
    metaRow.appendChild(feedback);
    metaRow.appendChild(report);
    node.appendChild(bubble);
    node.appendChild(metaRow);
    return { node: node, content: content, error: error, meta: meta, feedback: feedback, up: up, down: down, report: report };
  }

  function newEntry(msg) {
    var parts = buildMessageElement();
    var entry = { msg: msg, el: parts.node, parts: parts, error: null, rating: 0 };
    parts.up.addEventListener("click", function () { sendFeedback(entry, 1); });
    parts.down.addEventListener("click", function () { sendFeedback(entry, -1); });
    parts.report.addEventListener("click", function () { reportMessage(entry); });
    return entry;
  }

  function metaText(entry) {
    var msg = entry.msg;
    var bits = [msg.role];
    if (msg.status === "sending") bits.push("sending…");
    else if (msg.status) bits.push(msg.status);
    var timings = msg.timings || {};
    if (msg.status === "completed" && msg.role === "assistant" && typeof timings.total_ms === "number") {
      bits.push(Math.round(timings.total_ms) + " ms");
    }
    if (msg.safety && msg.safety.flagged) bits.push("flagged");
    var when = formatTime(msg.created_at);
    if (when) bits.push(when);
    return bits.join(" · ");
  }

  function renderMessage(entry) {
    var msg = entry.msg;
    var parts = entry.parts;
    var role = msg.role || "assistant";
    entry.el.className = "msg msg-" + role;
    entry.el.setAttribute("data-role", role);
    entry.el.setAttribute("data-status", msg.status || "");
    // The reply to a message the content filter blocked has nothing to show.
    entry.el.hidden = role === "assistant" && msg.status === "blocked" && msg.finish_reason === "input_blocked";
    if (msg.id != null) entry.el.setAttribute("data-id", String(msg.id));
    if (msg.generation_id != null) entry.el.setAttribute("data-generation-id", String(msg.generation_id));
    var content = msg.content || "";
    if (parts.content.textContent !== content) parts.content.textContent = content;

    var errorText = entry.error;
    if (!errorText && msg.status === "failed" && role === "assistant") errorText = "The reply could not be generated.";
    if (!errorText && msg.status === "blocked") {
      var cats = (msg.safety && msg.safety.categories) || [];
      var why = cats.length ? " (" + cats.join(", ") + ")" : "";
      errorText = role === "assistant"
        ? "This reply was stopped and hidden by the content filter" + why + "."
        : "This message was blocked by the content filter" + why + " and was not sent to the character. Moderators will review it.";
    }
    parts.error.textContent = errorText || "";
    parts.error.hidden = !errorText;
    if (entry.retryable) {
      var retry = make("button", "link-button", "Retry");
      retry.type = "button";
      retry.setAttribute("data-testid", "retry");
      retry.style.marginLeft = "6px";
      retry.addEventListener("click", function () { retrySend(entry); });
      parts.error.appendChild(retry);
    }

    parts.meta.textContent = metaText(entry);
    var canRate = role === "assistant" && msg.status === "completed" && msg.id != null;
    parts.feedback.hidden = !canRate;
    parts.report.hidden = !(role === "assistant" && msg.id != null &&
      (msg.status === "completed" || msg.status === "cancelled") && !entry.reported);
    parts.up.classList.toggle("selected", entry.rating === 1);
    parts.down.classList.toggle("selected", entry.rating === -1);
  }

  function updateEmptyState() {
    var hasMessages = el.items.children.length > 0;
    el.empty.hidden = hasMessages;
    if (!hasMessages) {
      el.empty.textContent = state.current ? "No messages yet. Say hello!" : "Pick a conversation or start a new chat.";
    }
  }

  function rememberGeneration(msg) {
    if (msg.generation_id == null || msg.id == null) return;
    state.genToMessage.set(msg.generation_id, msg.id);
    flushDeltas(msg.generation_id);
  }

  // Insert or update a message from the server. `where` is "append" (default) or "prepend".
  function upsertMessage(msg, where) {
    if (!msg || msg.id == null) return null;
    if (state.current && msg.conversation_id != null && msg.conversation_id !== state.current.id) return null;
    var stick = isNearBottom();
    var entry = state.messages.get(msg.id);
    if (!entry && msg.client_id && msg.role === "user" && state.pending.has(msg.client_id)) {
      entry = state.pending.get(msg.client_id);
      state.pending.delete(msg.client_id);
      entry.error = null;
      entry.retryable = false;
      // Blocked while still pending (the error came first): blocked it stays.
      entry.msg = entry.msg.status === "blocked" ? { status: "blocked", safety: entry.msg.safety } : {};
      state.messages.set(msg.id, entry);
    }
    if (!entry) {
      entry = newEntry({});
      state.messages.set(msg.id, entry);
      if (where === "prepend") el.items.insertBefore(entry.el, el.items.firstChild);
      else el.items.appendChild(entry.el);
      entry.msg = msg;
    } else {
      var local = entry.msg;
      var merged = Object.assign({}, local, msg);
      if (local.status === "blocked" && msg.status !== "blocked") {
        // Blocked by the content filter after this snapshot was taken: blocked it stays.
        merged.status = "blocked";
        merged.safety = local.safety;
      } else if (local.status && statusRank(msg.status) < statusRank(local.status)) {
        // A stale snapshot (e.g. a repeated message.created): keep the progress we already have.
        merged.status = local.status;
        merged.content = local.content;
      } else if (local.status === "streaming" && msg.status === "streaming" &&
                 (local.content || "").length > (msg.content || "").length) {
        merged.content = local.content;
      }
      entry.msg = merged;
    }
    if (entry.msg.generation_id != null && entry.msg.content === msg.content &&
        typeof msg.seq === "number") {
      // The text shown is now this snapshot: deltas 1..seq. Resume after it, never before.
      state.lastSeq.set(entry.msg.generation_id, msg.seq);
    }
    renderMessage(entry);
    rememberGeneration(entry.msg);
    updateEmptyState();
    if (stick && where !== "prepend") scrollToBottom();
    return entry;
  }

  function entryForGeneration(generationId) {
    var id = state.genToMessage.get(generationId);
    return id == null ? null : state.messages.get(id) || null;
  }

  function applyDelta(frame) {
    var entry = entryForGeneration(frame.generation_id);
    if (!entry) {
      var buffered = state.bufferedDeltas.get(frame.generation_id) || [];
      buffered.push(frame);
      state.bufferedDeltas.set(frame.generation_id, buffered);
      return;
    }
    var seq = Number(frame.seq);
    var last = state.lastSeq.get(frame.generation_id) || 0;
    if (seq && seq <= last) return; // already applied
    if (seq) state.lastSeq.set(frame.generation_id, seq);
    if (statusRank(entry.msg.status) >= 2) return; // already final
    var stick = isNearBottom();
    entry.msg.content = (entry.msg.content || "") + (frame.text || "");
    entry.msg.status = "streaming";
    renderMessage(entry);
    if (stick) scrollToBottom();
  }

  // A new connection does not get the live deltas of a reply that started before it unless it
  // asks: replay what this page has not shown yet (after the last seq it has), then go live.
  function resumeUnfinished() {
    state.messages.forEach(function (entry) {
      var m = entry.msg;
      if (m.generation_id == null || (m.status !== "queued" && m.status !== "streaming")) return;
      sendFrame({
        type: "stream.resume",
        generation_id: m.generation_id,
        after_seq: state.lastSeq.get(m.generation_id) || 0
      });
    });
  }

  function flushDeltas(generationId) {
    var buffered = state.bufferedDeltas.get(generationId);
    if (!buffered) return;
    state.bufferedDeltas.delete(generationId);
    buffered.sort(function (a, b) { return a.seq - b.seq; });
    buffered.forEach(applyDelta);
  }

  function loadMessages(token, merge) {
    var conv = state.current;
    return api("conversations/" + conv.id + "/messages/?limit=" + PAGE_SIZE).then(function (data) {
      if (token !== state.openToken) return;
      var results = (data && data.results) || [];
      if (!merge) state.olderUrl = data && data.next ? sameOriginPath(data.next) : null;
      results.forEach(function (m) { upsertMessage(m); });
      el.loadOlder.hidden = !state.olderUrl;
      updateEmptyState();
      if (!merge) scrollToBottom();
    });
  }

  function loadOlder() {
    if (!state.olderUrl || !state.current) return;
    var token = state.openToken;
    el.loadOlder.disabled = true;
    api(state.olderUrl).then(function (data) {
      if (token !== state.openToken) return;
      var before = el.messages.scrollHeight;
      var results = (data && data.results) || [];
      for (var i = results.length - 1; i >= 0; i--) upsertMessage(results[i], "prepend");
      state.olderUrl = data && data.next ? sameOriginPath(data.next) : null;
      el.loadOlder.hidden = !state.olderUrl;
      el.messages.scrollTop += el.messages.scrollHeight - before;
    }).catch(function (err) {
      toast("Could not load older messages: " + err.message, "error");
    }).then(function () { el.loadOlder.disabled = false; });
  }

  function sendFeedback(entry, rating) {
    if (entry.msg.id == null) return;
    api("messages/" + entry.msg.id + "/feedback/", { method: "POST", body: { rating: rating } })
      .then(function () {
        entry.rating = rating;
        renderMessage(entry);
      })
      .catch(function (err) { toast("Could not save feedback: " + err.message, "error"); });
  }

  function reportMessage(entry) {
    if (entry.msg.id == null) return;
    var reason = window.prompt("Why are you reporting this reply?");
    if (reason == null || !reason.trim()) return;
    api("messages/" + entry.msg.id + "/report/", { method: "POST", body: { reason: reason.trim() } })
      .then(function () {
        entry.reported = true;
        renderMessage(entry);
        toast("Thank you: the moderators will review this reply.");
      })
      .catch(function (err) {
        if (err.code === "already_reported") {
          entry.reported = true;
          renderMessage(entry);
          toast("You have already reported this reply.");
        } else {
          toast("Could not send the report: " + err.message, "error");
        }
      });
  }

  // --- sending --------------------------------------------------------------------------------

  function sendFrame(frame) {
    if (!socketOpen()) return false;
    state.ws.send(JSON.stringify(frame));
    return true;
  }

  function sendMessage() {
    var text = el.composer.value;
    if (!text.trim() || !state.current || !socketOpen() || state.banned) return;
    if (Date.now() < state.limitedUntil) return;
    var clientId = newClientId();
    var entry = newEntry({
      id: null, role: "user", content: text, status: "sending", client_id: clientId,
      conversation_id: state.current.id, created_at: new Date().toISOString()
    });
    state.pending.set(clientId, entry);
    el.items.appendChild(entry.el);
    renderMessage(entry);
    updateEmptyState();
    scrollToBottom();
    sendFrame({ type: "message.send", content: text, client_id: clientId });
    el.composer.value = "";
    el.composer.focus();
  }

  function retrySend(entry) {
    if (!socketOpen()) {
      toast("Not connected yet; try again in a moment.", "error");
      return;
    }
    entry.error = null;
    entry.retryable = false;
    entry.msg.status = "sending";
    state.pending.set(entry.msg.client_id, entry);
    renderMessage(entry);
    // Same client_id: the server treats a repeat as the same message.
    sendFrame({ type: "message.send", content: entry.msg.content, client_id: entry.msg.client_id });
  }

  function failPending(reason, retryable) {
    state.pending.forEach(function (entry) {
      if (entry.msg.status !== "sending") return;
      entry.msg.status = "failed";
      entry.error = "Not sent: " + reason;
      entry.retryable = retryable !== false;
      renderMessage(entry);
    });
  }

  // The content filter blocked the message being sent: it is kept, marked blocked (the
  // server's message.created replaces this local copy with the saved one).
  function blockPending(details) {
    var sent = details && details.message_id != null ? state.messages.get(details.message_id) : null;
    if (sent) {
      sent.msg.status = "blocked";
      sent.msg.safety = { flagged: true, categories: details.categories || [] };
      sent.retryable = false;
      renderMessage(sent);
    }
    state.pending.forEach(function (entry) {
      if (entry.msg.status !== "sending") return;
      entry.msg.status = "blocked";
      entry.msg.safety = { flagged: true, categories: (details && details.categories) || [] };
      entry.retryable = false;
      renderMessage(entry);
    });
  }

  // --- websocket ------------------------------------------------------------------------------

  function handleFrame(frame) {
    if (!frame || typeof frame.type !== "string") return;
    var entry;
    switch (frame.type) {
      case "message.created":
        if (frame.message) {
          if (frame.client_id && !frame.message.client_id && frame.message.role === "user") {
            frame.message.client_id = frame.client_id;
          }
          upsertMessage(frame.message);
          if (state.current) bumpConversation(state.current.id, frame.message.created_at);
        }
        break;
      case "generation.started":
        state.genToMessage.set(frame.generation_id, frame.message_id);
        entry = state.messages.get(frame.message_id);
        if (entry) {
          entry.msg.generation_id = frame.generation_id;
          if (statusRank(entry.msg.status) < 1) entry.msg.status = "streaming";
          renderMessage(entry);
        }
        flushDeltas(frame.generation_id);
        break;
      case "generation.delta":
        applyDelta(frame);
        break;
      case "generation.completed":
      case "generation.cancelled":
        if (frame.message) {
          if (frame.message.generation_id == null) frame.message.generation_id = frame.generation_id;
          entry = state.messages.get(frame.message.id);
          if (entry) entry.msg.status = null; // final state always wins over local progress
          upsertMessage(frame.message);
        } else {
          entry = entryForGeneration(frame.generation_id);
          if (entry) {
            entry.msg.status = frame.type === "generation.completed" ? "completed" : "cancelled";
            renderMessage(entry);
          }
        }
        state.bufferedDeltas.delete(frame.generation_id);
        break;
      case "generation.failed":
        entry = frame.message_id != null ? state.messages.get(frame.message_id) : null;
        entry = entry || entryForGeneration(frame.generation_id);
        if (entry && frame.message && frame.message.status === "blocked") {
          // Stopped by the content filter: the text shown so far goes, the notice stays.
          entry.msg.status = null;
          entry.error = null;
          upsertMessage(frame.message);
        } else if (entry) {
          entry.msg.status = "failed";
          entry.error = (frame.error && frame.error.message) || "The reply could not be generated.";
          renderMessage(entry);
        } else {
          toast("Generation failed: " + ((frame.error && frame.error.message) || "unknown error"), "error");
        }
        state.bufferedDeltas.delete(frame.generation_id);
        break;
      case "safety.flagged":
        entry = state.messages.get(frame.message_id);
        if (entry) {
          entry.msg.safety = { flagged: true, categories: frame.categories || [] };
          renderMessage(entry);
        }
        break;
      case "conversation.updated":
        updateConversation(frame.conversation);
        break;
      case "rate_limited":
        failPending("you have reached a sending limit; try again when it lifts.");
        rateLimited(frame.limit, frame.retry_after);
        break;
      case "error":
        var err = frame.error || {};
        if (err.code === "content_blocked") {
          blockPending(err.details);
          toast("Your message was blocked by the content filter.", "error");
        } else if (err.code === "banned") {
          failPending("your account is suspended.", false);
          banned(err.details);
        } else {
          failPending(err.message || err.code || "error");
          toast(err.message || err.code || "Something went wrong.", "error");
        }
        break;
      case "pong":
        break;
      default:
        break;
    }
  }

  function clearTimers() {
    if (state.reconnectTimer) clearTimeout(state.reconnectTimer);
    if (state.pingTimer) clearInterval(state.pingTimer);
    state.reconnectTimer = null;
    state.pingTimer = null;
  }

  function closeSocket() {
    state.socketToken++;
    clearTimers();
    if (state.ws) {
      try { state.ws.close(1000); } catch (e) { /* already closed */ }
    }
    state.ws = null;
  }

  function connect() {
    if (!state.current) return;
    closeSocket();
    var token = state.socketToken;
    var scheme = window.location.protocol === "https:" ? "wss://" : "ws://";
    var url = scheme + window.location.host + WS_PATH + state.current.id + "/";
    setStatus(state.reconnectAttempts ? "reconnecting" : "connecting",
      state.reconnectAttempts ? "Reconnecting…" : "Connecting…");
    var ws;
    try {
      ws = new WebSocket(url);
    } catch (e) {
      scheduleReconnect(token);
      return;
    }
    state.ws = ws;

    ws.onopen = function () {
      if (token !== state.socketToken) return;
      state.reconnectAttempts = 0;
      hideBanner();
      setStatus("open", "Connected");
      state.pingTimer = setInterval(function () { sendFrame({ type: "ping" }); }, PING_INTERVAL_MS);
      if (state.needsResync) {
        // Catch up on anything that happened while we were away, then resume the streams.
        state.needsResync = false;
        loadMessages(state.openToken, true).then(resumeUnfinished, resumeUnfinished);
      } else {
        resumeUnfinished();
      }
    };

    ws.onmessage = function (event) {
      if (token !== state.socketToken) return;
      var frame;
      try { frame = JSON.parse(event.data); } catch (e) { return; }
      handleFrame(frame);
    };

    ws.onclose = function (event) {
      if (token !== state.socketToken) return;
      clearTimers();
      state.ws = null;
      failPending("the connection was lost.");
      if (event.code === 4401) {
        state.stopped = true;
        setStatus("closed", "Not signed in");
        showBanner("Your session has ended. Reload the page to log in again.");
        return;
      }
      if (event.code === 4403) {
        state.stopped = true;
        if (!state.banned) banned({});
        return;
      }
      if (event.code === 4404) {
        state.stopped = true;
        setStatus("closed", "Not found");
        showBanner("This conversation does not exist or is not yours.");
        return;
      }
      scheduleReconnect(token);
    };
  }

  function scheduleReconnect(token) {
    if (token !== state.socketToken || !state.current || state.stopped) return;
    state.needsResync = true;
    var base = Math.min(MAX_BACKOFF_MS, 500 * Math.pow(2, state.reconnectAttempts));
    var delay = Math.round(base * (0.5 + Math.random() * 0.5));
    state.reconnectAttempts++;
    setStatus("reconnecting", "Reconnecting in " + Math.max(1, Math.round(delay / 1000)) + " s");
    state.reconnectTimer = setTimeout(function () {
      if (token === state.socketToken) connect();
    }, delay);
  }

  // --- opening a conversation -----------------------------------------------------------------

  function resetMessages() {
    state.messages.clear();
    state.pending.clear();
    state.genToMessage.clear();
    state.lastSeq.clear();
    state.bufferedDeltas.clear();
    state.olderUrl = null;
    el.items.textContent = "";
    el.loadOlder.hidden = true;
  }

  function openConversation(conv) {
    closeSocket();
    resetMessages();
    hideBanner();
    state.current = conv;
    state.stopped = false;
    state.reconnectAttempts = 0;
    state.needsResync = false;
    var token = ++state.openToken;
    el.title.textContent = conversationTitle(conv);
    if (window.location.hash !== "#conversation-" + conv.id) {
      history.replaceState(null, "", "#conversation-" + conv.id);
    }
    renderConversations();
    updateEmptyState();
    setStatus("connecting", "Loading…");
    loadMessages(token, false).then(function () {
      if (token !== state.openToken) return;
      connect();
      el.composer.focus();
    }).catch(function (err) {
      if (token !== state.openToken) return;
      setStatus("closed", "Not connected");
      if (err.code === "banned") banned(err.details);
      else if (err.status === 404) showBanner("This conversation does not exist or is not yours.");
      else if (err.status === 401 || err.status === 403) showBanner("Your session has ended. Reload the page to log in again.");
      else showBanner("Could not load messages: " + err.message);
    });
  }

  function openFromHash() {
    var match = /^#conversation-(\d+)$/.exec(window.location.hash);
    if (!match) return false;
    var id = parseInt(match[1], 10);
    var conv = state.conversations.find(function (c) { return c.id === id; });
    openConversation(conv || { id: id, title: "", character_id: null });
    return true;
  }

  // --- wiring ---------------------------------------------------------------------------------

  el.newChatForm.addEventListener("submit", createConversation);
  el.moreConversations.addEventListener("click", function () {
    if (state.conversationsNext) loadConversations(state.conversationsNext);
  });
  el.loadOlder.addEventListener("click", loadOlder);
  el.banner.querySelector(".banner-close").addEventListener("click", hideBanner);

  el.composerForm.addEventListener("submit", function (event) {
    event.preventDefault();
    sendMessage();
  });
  el.composer.addEventListener("keydown", function (event) {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      sendMessage();
    }
  });

  // A link to #conversation-<id> (a search hit) opens it.
  window.addEventListener("hashchange", function () {
    var match = /^#conversation-(\d+)$/.exec(window.location.hash);
    if (match && !(state.current && state.current.id === parseInt(match[1], 10))) openFromHash();
  });

  window.addEventListener("online", function () {
    // Back online: skip the rest of the backoff wait.
    if (state.current && !state.stopped && !state.ws && state.reconnectTimer) {
      state.reconnectAttempts = Math.max(1, state.reconnectAttempts);
      connect();
    }
  });

  updateComposer();
  updateEmptyState();
  Promise.all([loadCharacters(), loadConversations()]).then(function () {
    if (!state.current) openFromHash();
    if (state.current) el.title.textContent = conversationTitle(state.current);
  });
})();

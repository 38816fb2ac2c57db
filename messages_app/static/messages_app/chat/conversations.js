/* The conversation list in the sidebar: titles from the server (the character's name while a
 * title is still empty), avatars, groups by recency, inline rename, delete with a confirmation,
 * a debounced search box, and live updates from the page (`upsert`).
 *
 * Every server string goes into the DOM as text (textContent, attributes), never as HTML.
 */
import { avatarElement, ensureLibraryStyles, errorText, h, pageOf } from "./library-dom.js";

const SEARCH_DELAY_MS = 250;
const DAY_MS = 24 * 60 * 60 * 1000;

/** The title a person sees: the server's, else the character's name, else a number. */
export function conversationLabel(conv) {
  if (conv.title) return conv.title;
  const name = conv.character && conv.character.name;
  return name || conv.character_name || `Conversation ${conv.id}`;
}

function activityTime(conv) {
  const iso = conv.last_activity_at || conv.updated_at || conv.created_at;
  const t = iso ? Date.parse(iso) : NaN;
  return Number.isNaN(t) ? 0 : t;
}

const GROUPS = ["Today", "Yesterday", "Previous 7 days", "Previous 30 days", "Older"];

/** The recency group of a time (ms), by the calendar days of `now` in local time. */
export function recencyGroup(time, now = new Date()) {
  const startOfToday = new Date(now.getFullYear(), now.getMonth(), now.getDate()).getTime();
  if (time >= startOfToday) return "Today";
  if (time >= startOfToday - DAY_MS) return "Yesterday";
  if (time >= startOfToday - 7 * DAY_MS) return "Previous 7 days";
  if (time >= startOfToday - 30 * DAY_MS) return "Previous 30 days";
  return "Older";
}

function shortTime(time, group) {
  if (!time) return "";
  const d = new Date(time);
  if (group === "Today" || group === "Yesterday") {
    return d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  }
  const sameYear = d.getFullYear() === new Date().getFullYear();
  return d.toLocaleDateString([], sameYear
    ? { month: "short", day: "numeric" }
    : { year: "numeric", month: "short", day: "numeric" });
}

/**
 * Mount the list into `navEl`.
 * options: { api, onOpen(conversationId), getActiveId(),
 *            onDeleted?(conversationId, {wasActive, neighbour}) (neighbour: the id of the item
 *            next to it, or null when none is left), onChanged?(conversation) (after a rename) }
 * Without onDeleted, deleting the open conversation opens its neighbour.
 * returns { refresh(), setActive(id), upsert(conversation), remove(id) }
 * A deleted conversation is also announced as a `conversation-deleted` event on `navEl`
 * (detail: {id, wasActive}).
 */
export function mountConversationList(navEl, options) {
  const { api, onOpen, getActiveId, onDeleted, onChanged } = options;
  ensureLibraryStyles();

  const state = {
    items: new Map(), // id -> conversation
    next: null,
    query: "",
    loadToken: 0,
    activeId: getActiveId ? getActiveId() : null,
    renamingId: null,
    loaded: false,
  };

  navEl.textContent = "";
  navEl.classList.add("cl");
  const searchId = `cl-search-${Math.random().toString(36).slice(2, 8)}`;
  const searchInput = h("input", {
    type: "search",
    id: searchId,
    class: "cl-search-input",
    placeholder: "Search conversations",
    maxlength: "200",
    autocomplete: "off",
    "data-testid": "conversation-search",
  });
  const searchBox = h("div", { class: "cl-search", role: "search" },
    h("label", { for: searchId, class: "visually-hidden" }, "Search conversations"),
    searchInput);
  const status = h("p", { class: "cl-status", role: "status", "data-testid": "conversation-status" });
  const groupsEl = h("div", { class: "cl-groups" });
  const more = h("button", { type: "button", class: "cl-more link-button", hidden: "" }, "Load more");
  navEl.append(searchBox, status, groupsEl, more);

  // --- the confirmation dialog for a delete --------------------------------------------------
  const confirmTitle = h("h2", { class: "cl-confirm-title", id: `${searchId}-confirm` }, "Delete this conversation?");
  const confirmText = h("p", { class: "cl-confirm-text" });
  const confirmError = h("p", { class: "cl-error", role: "alert", hidden: "" });
  const confirmCancel = h("button", { type: "button", "data-testid": "conversation-delete-cancel" }, "Cancel");
  const confirmOk = h("button", { type: "button", class: "danger", "data-testid": "conversation-delete-confirm" }, "Delete");
  const confirmDialog = h("dialog", {
    class: "cl-confirm lib-dialog",
    "aria-labelledby": confirmTitle.id,
    "data-testid": "conversation-delete-dialog",
  }, confirmTitle, confirmText, confirmError,
  h("div", { class: "lib-dialog-actions" }, confirmCancel, confirmOk));
  document.body.appendChild(confirmDialog);
  let pendingDelete = null; // {id, returnFocus}

  confirmCancel.addEventListener("click", () => confirmDialog.close());
  // Escape closes the dialog (the browser's `cancel`) and nothing else: not a streaming reply.
  confirmDialog.addEventListener("keydown", (event) => {
    if (event.key === "Escape") event.stopPropagation();
  });
  // `close` comes after the dialog has gone (a task later): the focus is placed here.
  confirmDialog.addEventListener("close", () => {
    const pending = pendingDelete || {};
    pendingDelete = null;
    if (pending.deleted) focusItem(pending.neighbour) || searchInput.focus();
    else if (pending.returnFocus && pending.returnFocus.isConnected) pending.returnFocus.focus();
    else focusItem(state.activeId) || searchInput.focus();
  });
  confirmOk.addEventListener("click", async () => {
    if (!pendingDelete) return;
    const { id } = pendingDelete;
    confirmOk.disabled = true;
    confirmError.hidden = true;
    try {
      await api.deleteConversation(id);
    } catch (err) {
      if (!err || err.status !== 404) {
        confirmError.textContent = `Couldn't delete: ${errorText(err)}`;
        confirmError.hidden = false;
        confirmOk.disabled = false;
        return;
      }
    }
    confirmOk.disabled = false;
    const neighbour = neighbourOf(id);
    Object.assign(pendingDelete, { deleted: true, neighbour });
    const wasActive = removeItem(id);
    say("Conversation deleted.");
    navEl.dispatchEvent(new CustomEvent("conversation-deleted", { detail: { id, wasActive } }));
    if (onDeleted) onDeleted(id, { wasActive, neighbour });
    else if (wasActive && neighbour != null) {
      // The open conversation is gone: open the next one rather than leave a dead thread.
      setActive(neighbour);
      onOpen(neighbour);
    }
    confirmDialog.close();
  });

  // A passing notice in the status line (read out by screen readers), gone after a while.
  let sayTimer = null;
  function say(text) {
    clearTimeout(sayTimer);
    status.textContent = text;
    sayTimer = setTimeout(() => {
      if (status.textContent === text) status.textContent = "";
    }, 4000);
  }

  function askDelete(conv, trigger) {
    pendingDelete = { id: conv.id, returnFocus: trigger };
    confirmText.textContent = `“${conversationLabel(conv)}” and all its messages will be deleted. This cannot be undone.`;
    confirmError.hidden = true;
    confirmOk.disabled = false;
    confirmDialog.showModal();
    confirmCancel.focus();
  }

  // --- rendering -----------------------------------------------------------------------------

  function sorted() {
    return Array.from(state.items.values()).sort((a, b) => activityTime(b) - activityTime(a) || b.id - a.id);
  }

  function neighbourOf(id) {
    const list = sorted();
    const i = list.findIndex((c) => c.id === id);
    if (i < 0) return null;
    const n = list[i + 1] || list[i - 1];
    return n ? n.id : null;
  }

  function focusItem(id, part = "open") {
    if (id == null) return false;
    const node = groupsEl.querySelector(`[data-id="${CSS.escape(String(id))}"] [data-part="${part}"]`);
    if (!node) return false;
    node.focus();
    return true;
  }

  function render() {
    if (state.renamingId != null) return; // an open rename box is not redrawn under the typing
    const focused = document.activeElement;
    const focusedItem = focused && groupsEl.contains(focused) ? focused.closest("[data-id]") : null;
    const focus = focusedItem ? { id: focusedItem.getAttribute("data-id"), part: focused.getAttribute("data-part") } : null;

    groupsEl.textContent = "";
    const list = sorted();
    const now = new Date();
    let current = null;
    let ul = null;
    for (const conv of list) {
      const time = activityTime(conv);
      const group = recencyGroup(time, now);
      if (group !== current) {
        current = group;
        const headingId = `${searchId}-g${GROUPS.indexOf(group)}`;
        ul = h("ul", { class: "cl-list", "aria-labelledby": headingId });
        groupsEl.append(h("section", { class: "cl-group", "data-group": group },
          h("h3", { class: "cl-group-title", id: headingId, "data-testid": "conversation-group" }, group),
          ul));
      }
      ul.append(itemElement(conv, group, time));
    }
    if (!list.length && state.loaded) {
      status.textContent = state.query
        ? `No conversations match “${state.query}”.`
        : "No conversations yet. Start a chat with a character.";
    } else if (list.length && /^No conversations/.test(status.textContent)) {
      status.textContent = "";
    }
    more.hidden = !state.next;
    if (focus) focusItem(focus.id, focus.part || "open");
  }

  function itemElement(conv, group, time) {
    const title = conversationLabel(conv);
    const active = state.activeId != null && String(state.activeId) === String(conv.id);
    const character = conv.character || { name: conv.character_name || "", avatar_url: null };
    const open = h("button", {
      type: "button",
      class: "cl-open",
      "data-part": "open",
      "data-testid": "conversation-open",
      "aria-current": active ? "page" : null,
    },
    avatarElement(character, "cl-avatar"),
    h("span", { class: "cl-text" },
      h("span", { class: "cl-title", "data-testid": "conversation-title" }, title),
      h("span", { class: "cl-meta" },
        [character.name && character.name !== title ? character.name : null, shortTime(time, group)]
          .filter(Boolean).join(" · "))));
    open.addEventListener("click", () => {
      setActive(conv.id);
      onOpen(conv.id);
    });
    const rename = h("button", {
      type: "button",
      class: "cl-action",
      "data-part": "rename",
      "data-testid": "conversation-rename",
      "aria-label": `Rename “${title}”`,
      title: "Rename",
    }, icon("pencil"));
    rename.addEventListener("click", () => startRename(conv.id));
    const del = h("button", {
      type: "button",
      class: "cl-action",
      "data-part": "delete",
      "data-testid": "conversation-delete",
      "aria-label": `Delete “${title}”`,
      title: "Delete",
    }, icon("trash"));
    del.addEventListener("click", () => askDelete(conv, del));
    return h("li", {
      class: `cl-item${active ? " active" : ""}`,
      "data-id": String(conv.id),
      "data-testid": "conversation-item",
    }, open, h("span", { class: "cl-actions" }, rename, del), active ? exportLinks(conv) : null);
  }

  // Downloads of the open conversation's active branch, unless the page shows its own.
  function exportLinks(conv) {
    if (!api.exportChatUrl) return null;
    const elsewhere = Array.from(document.querySelectorAll('[data-testid="chat-export-md"]'))
      .some((node) => !navEl.contains(node));
    if (elsewhere) return null;
    const title = conversationLabel(conv);
    const link = (format, label, testid) => h("a", {
      href: api.exportChatUrl(conv.id, format),
      download: "",
      class: "cl-export-link",
      "data-testid": testid,
      "aria-label": `Export “${title}” as ${label}`,
    }, label);
    return h("span", { class: "cl-export" }, "Export: ",
      link("markdown", "Markdown", "chat-export-md"), " · ",
      link("jsonl", "JSONL", "chat-export-jsonl"));
  }

  // --- rename inline -------------------------------------------------------------------------

  function startRename(id) {
    const conv = state.items.get(id);
    const li = groupsEl.querySelector(`[data-id="${CSS.escape(String(id))}"]`);
    if (!conv || !li) return;
    if (state.renamingId != null) return;
    state.renamingId = id;
    const input = h("input", {
      type: "text",
      class: "cl-rename-input",
      value: conv.title || "",
      placeholder: conversationLabel(conv),
      maxlength: "200",
      "aria-label": "New title (empty: automatic)",
      "data-testid": "conversation-rename-input",
    });
    const error = h("span", { class: "cl-error", role: "alert", hidden: "" });
    const form = h("form", { class: "cl-rename" }, input, error);
    li.textContent = "";
    li.classList.add("renaming");
    li.append(form);
    input.focus();
    input.select();

    let done = false;
    async function finish(save) {
      if (done) return;
      done = true;
      const title = input.value.trim();
      if (save && title !== (conv.title || "")) {
        input.disabled = true;
        try {
          const updated = await api.renameConversation(id, title);
          const merged = mergeConversation(conv, updated || { ...conv, title });
          state.items.set(id, merged);
          say("Conversation renamed.");
          if (onChanged) onChanged(merged); // the page's header follows
        } catch (err) {
          done = false;
          input.disabled = false;
          error.textContent = `Couldn't rename: ${errorText(err)}`;
          error.hidden = false;
          input.focus();
          return;
        }
      }
      state.renamingId = null;
      render();
      focusItem(id, "rename") || focusItem(id);
    }
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      finish(true);
    });
    input.addEventListener("keydown", (event) => {
      if (event.key === "Escape") {
        event.preventDefault();
        event.stopPropagation();
        finish(false);
      }
    });
    input.addEventListener("blur", () => {
      // A click elsewhere keeps what was typed, as in most chat apps.
      if (!input.disabled) finish(true);
    });
  }

  // --- keyboard: arrows move between conversations, F2 renames, Delete deletes ---------------

  groupsEl.addEventListener("keydown", (event) => {
    const target = event.target;
    if (!(target instanceof HTMLElement) || target.tagName === "INPUT") return;
    const li = target.closest("[data-id]");
    if (!li) return;
    const id = Number(li.getAttribute("data-id"));
    const opens = Array.from(groupsEl.querySelectorAll('[data-part="open"]'));
    const index = opens.indexOf(li.querySelector('[data-part="open"]'));
    let next = null;
    if (event.key === "ArrowDown") next = opens[index + 1];
    else if (event.key === "ArrowUp") next = opens[index - 1];
    else if (event.key === "Home") next = opens[0];
    else if (event.key === "End") next = opens[opens.length - 1];
    else if (event.key === "F2") {
      event.preventDefault();
      startRename(id);
      return;
    } else if (event.key === "Delete") {
      event.preventDefault();
      const conv = state.items.get(id);
      if (conv) askDelete(conv, target);
      return;
    } else {
      return;
    }
    event.preventDefault();
    if (next) next.focus();
  });
  searchInput.addEventListener("keydown", (event) => {
    if (event.key === "ArrowDown") {
      const first = groupsEl.querySelector('[data-part="open"]');
      if (first) {
        event.preventDefault();
        first.focus();
      }
    } else if (event.key === "Escape" && searchInput.value) {
      event.preventDefault();
      event.stopPropagation();
      searchInput.value = "";
      search("");
    }
  });

  // --- loading and search --------------------------------------------------------------------

  async function load({ append = false, rethrow = false } = {}) {
    const token = ++state.loadToken;
    const q = state.query;
    navEl.setAttribute("aria-busy", "true");
    try {
      const data = pageOf(await api.listConversations({ q: q || undefined, cursor: append ? state.next : undefined }));
      if (token !== state.loadToken) return;
      if (!append) state.items.clear();
      for (const conv of data.results) state.items.set(conv.id, mergeConversation(state.items.get(conv.id), conv));
      state.next = data.next;
      state.loaded = true;
      if (q) {
        status.textContent = data.results.length || append ? "" : `No conversations match “${q}”.`;
      } else if (/^(No conversations match|Couldn't)/.test(status.textContent)) {
        status.textContent = "";
      }
      render();
    } catch (err) {
      if (token !== state.loadToken) return;
      status.textContent = `Couldn't load conversations: ${errorText(err)}`;
      if (rethrow) throw err;
    } finally {
      if (token === state.loadToken) navEl.removeAttribute("aria-busy");
    }
  }

  let searchTimer = null;
  function search(q) {
    clearTimeout(searchTimer);
    state.query = q;
    state.next = null;
    return load();
  }
  searchInput.addEventListener("input", () => {
    clearTimeout(searchTimer);
    const q = searchInput.value.trim();
    searchTimer = setTimeout(() => {
      if (q !== state.query) search(q);
    }, SEARCH_DELAY_MS);
  });
  more.addEventListener("click", () => load({ append: true }));

  // --- the page's handles --------------------------------------------------------------------

  function matchesQuery(conv) {
    if (!state.query) return true;
    const q = state.query.toLowerCase();
    const name = (conv.character && conv.character.name) || conv.character_name || "";
    return (conv.title || "").toLowerCase().includes(q) || name.toLowerCase().includes(q);
  }

  function setActive(id) {
    state.activeId = id == null ? null : id;
    render();
  }

  function upsert(conv) {
    if (!conv || conv.id == null) return;
    const known = state.items.get(conv.id);
    const merged = mergeConversation(known, conv);
    if (!known && (merged.character_id == null || !matchesQuery(merged))) return;
    state.items.set(conv.id, merged);
    if (state.renamingId === conv.id) return;
    render();
  }

  function removeItem(id) {
    const wasActive = state.activeId != null && String(state.activeId) === String(id);
    state.items.delete(id);
    if (state.renamingId === id) state.renamingId = null;
    render();
    return wasActive;
  }

  return {
    // The page calls this first, and hears of a failure (a ban) from it.
    refresh: () => load({ rethrow: true }),
    setActive,
    upsert,
    remove: (id) => { removeItem(id); },
  };
}

/** A conversation from an event may lack fields the list has (the character): keep them. */
function mergeConversation(known, update) {
  if (!known) return { ...update };
  const merged = { ...known, ...update };
  if (!update.character && known.character) merged.character = known.character;
  return merged;
}

const ICONS = {
  // Feather icons (MIT): edit-2 and trash-2.
  pencil: ["M17 3a2.83 2.83 0 1 1 4 4L7.5 20.5 2 22l1.5-5.5L17 3z"],
  trash: ["M3 6h18", "M19 6l-1 14a2 2 0 0 1-2 2H8a2 2 0 0 1-2-2L5 6", "M10 11v6", "M14 11v6",
    "M9 6V4a1 1 0 0 1 1-1h4a1 1 0 0 1 1 1v2"],
};

function icon(name) {
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  for (const [k, v] of Object.entries({
    viewBox: "0 0 24 24", fill: "none", stroke: "currentColor", "stroke-width": "2",
    "stroke-linecap": "round", "stroke-linejoin": "round", "aria-hidden": "true", focusable: "false",
  })) svg.setAttribute(k, v);
  for (const d of ICONS[name]) {
    const path = document.createElementNS(ns, "path");
    path.setAttribute("d", d);
    svg.appendChild(path);
  }
  return svg;
}

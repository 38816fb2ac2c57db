/* The chat page's state rules, with no DOM: which messages the open conversation has, which of
 * them form the branch shown (the thread), and how server snapshots, deltas and local sends
 * merge. Unit-tested with `node --test tests/js/`.
 *
 * An entry is `{key, msg, error, errorCode, retryable, rating, reported, retrying}`; it keeps its
 * identity while its message changes (a local send becomes the saved message), so a view can
 * hang off it. Methods that change entries mark them dirty (`takeDirty()`), and bump
 * `threadVersion` when the thread's order changes. */

export const FINAL_STATUSES = new Set(["completed", "failed", "cancelled", "blocked"]);
export const LIVE_STATUSES = new Set(["sending", "queued", "streaming"]);

export function statusRank(status) {
  if (status === "sending" || status === "queued") return 0;
  if (status === "streaming") return 1;
  return 2;
}

/* The message to keep when `incoming` (a server snapshot) meets what the page has (`local`). */
export function mergeMessage(local, incoming) {
  const merged = Object.assign({}, local, incoming);
  if (local.status === "blocked" && incoming.status !== "blocked") {
    // Blocked by the content filter after this snapshot was taken: blocked it stays.
    merged.status = "blocked";
    merged.safety = local.safety;
    if (merged.role === "assistant") merged.content = "";
  } else if (local.status && statusRank(incoming.status) < statusRank(local.status)) {
    // A stale snapshot (e.g. a repeated message.created): keep the progress already shown.
    merged.status = local.status;
    merged.content = local.content;
  } else if (
    local.status === "streaming" &&
    incoming.status === "streaming" &&
    (local.content || "").length > (incoming.content || "").length
  ) {
    merged.content = local.content;
  }
  return merged;
}

let keys = 0;

function newEntry(msg) {
  keys += 1;
  return {
    key: "e" + keys,
    msg,
    error: null,
    errorCode: null,
    retryable: false,
    rating: 0,
    reported: false,
    retrying: false,
  };
}

export class ChatStore {
  constructor(conversationId = null) {
    this.reset(conversationId);
  }

  reset(conversationId = null) {
    this.conversationId = conversationId;
    this.byId = new Map(); // message id -> entry
    this.pending = new Map(); // client_id -> entry of a local send not yet saved
    this.thread = []; // entries of the branch shown, oldest first
    this.threadVersion = 0;
    this.genToMessage = new Map(); // generation id -> message id
    this.lastSeq = new Map(); // generation id -> highest delta seq applied
    this.held = new Map(); // generation id -> Map(seq -> frame) not yet applicable
    this.dirty = new Set();
  }

  get(id) {
    return this.byId.get(id) || null;
  }

  entryForGeneration(generationId) {
    const id = this.genToMessage.get(generationId);
    return id == null ? null : this.byId.get(id) || null;
  }

  takeDirty() {
    const out = Array.from(this.dirty);
    this.dirty.clear();
    return out;
  }

  touch(entry) {
    if (entry) this.dirty.add(entry);
  }

  _setThread(list) {
    this.thread = list;
    this.threadVersion += 1;
  }

  /* The reply being generated on the thread shown (queued or streaming), if any. */
  activeReply() {
    for (let i = this.thread.length - 1; i >= 0; i--) {
      const m = this.thread[i].msg;
      if (m.role === "assistant" && (m.status === "queued" || m.status === "streaming")) {
        return this.thread[i];
      }
    }
    return null;
  }

  /* True while a send is on its way or a reply is being generated: the page holds Send. */
  busy() {
    for (const entry of this.pending.values()) if (entry.msg.status === "sending") return true;
    return this.activeReply() !== null;
  }

  lastReply() {
    for (let i = this.thread.length - 1; i >= 0; i--) {
      if (this.thread[i].msg.role === "assistant") return this.thread[i];
      if (this.thread[i].msg.role === "user") return null;
    }
    return null;
  }

  // --- server snapshots ------------------------------------------------------------------

  /* Insert or update a message from the server; place it on the thread by its parent (a new
   * message is the conversation's active leaf). Returns {entry, needsReload} or null when the
   * message is not this conversation's. `needsReload` means its parent is not known here: the
   * caller should load the active branch again. `place: false` leaves the thread alone. */
  upsert(msg, { place = true } = {}) {
    if (!msg || msg.id == null) return null;
    if (
      this.conversationId != null &&
      msg.conversation_id != null &&
      msg.conversation_id !== this.conversationId
    ) {
      return null;
    }
    let entry = this.byId.get(msg.id);
    if (!entry && msg.client_id && msg.role === "user" && this.pending.has(msg.client_id)) {
      entry = this.pending.get(msg.client_id);
      this.pending.delete(msg.client_id);
      entry.error = null;
      entry.errorCode = null;
      entry.retryable = false;
      // Blocked while still pending (the error came first): blocked it stays.
      const local = entry.msg;
      entry.msg =
        local.status === "blocked"
          ? mergeMessage({ status: "blocked", safety: local.safety }, msg)
          : Object.assign({}, msg);
      this.byId.set(msg.id, entry);
    } else if (!entry) {
      entry = newEntry(Object.assign({}, msg));
      this.byId.set(msg.id, entry);
    } else {
      entry.msg = mergeMessage(entry.msg, msg);
    }
    if (entry.msg.status === "blocked" && entry.msg.role === "assistant") entry.msg.content = "";
    const gen = entry.msg.generation_id;
    if (gen != null) {
      this.genToMessage.set(gen, msg.id);
      if (entry.msg.content === msg.content && typeof msg.seq === "number") {
        // The text shown is now this snapshot: deltas 1..seq. Resume after it, never before.
        this.lastSeq.set(gen, msg.seq);
      }
    }
    this._spreadSiblings(entry);
    this.dirty.add(entry);
    let needsReload = false;
    if (place) needsReload = this._place(entry);
    if (gen != null) this._drain(gen);
    return { entry, needsReload };
  }

  // Siblings' "2 of 3" follow a new alternative.
  _spreadSiblings(entry) {
    const sib = entry.msg.siblings;
    if (!sib || !Array.isArray(sib.ids)) return;
    sib.ids.forEach((id, index) => {
      if (id === entry.msg.id) return;
      const other = this.byId.get(id);
      if (!other) return;
      const old = other.msg.siblings;
      if (old && old.total === sib.ids.length && old.position === index + 1) return;
      other.msg.siblings = { ids: sib.ids.slice(), position: index + 1, total: sib.ids.length };
      this.dirty.add(other);
    });
  }

  // Put `entry` on the thread after its parent, cutting what followed the parent (another
  // branch). Returns true when the parent is unknown (the thread cannot be fixed here).
  _place(entry) {
    const parentId = entry.msg.parent_id;
    if (parentId === undefined) {
      if (!this.thread.includes(entry)) this._setThread(this.thread.concat([entry]));
      return false;
    }
    const at = this.thread.indexOf(entry);
    if (at >= 0) {
      const before = at > 0 ? this.thread[at - 1].msg.id : undefined;
      if (at > 0 && before === parentId) return false;
      if (at === 0 && (parentId === null || !this.byId.has(parentId))) return false;
    }
    // The chain from the thread (or the root) down to the entry, through known messages.
    const chain = [entry];
    let id = parentId;
    while (id !== null && id !== undefined) {
      const parent = this.byId.get(id);
      if (!parent) {
        // Unknown ancestor: show it at the end for now; the caller reloads the branch.
        if (at < 0) this._setThread(this.thread.concat([entry]));
        return true;
      }
      const index = this.thread.indexOf(parent);
      if (index >= 0) {
        this._setThread(
          this.thread
            .slice(0, index + 1)
            .filter((e) => !chain.includes(e))
            .concat(chain),
        );
        return false;
      }
      chain.unshift(parent);
      id = parent.msg.parent_id;
    }
    this._setThread(chain); // a new root: a greeting's alternative
    return false;
  }

  /* The active branch as loaded over REST (a page, oldest first) becomes the thread. Older
   * entries already shown stay when the page continues them; local sends (on their way, or
   * not sent) stay at the end when they answer a message of this branch, and wait, off the
   * thread, while another branch is shown (a Retry there would answer the wrong turn). */
  setThread(messages) {
    const page = [];
    for (const msg of messages) {
      const result = this.upsert(msg, { place: false });
      if (result) page.push(result.entry);
    }
    let list = page;
    if (page.length) {
      const firstParent = page[0].msg.parent_id;
      const index = this.thread.findIndex((e) => e.msg.id != null && e.msg.id === firstParent);
      if (index >= 0) list = this.thread.slice(0, index + 1).concat(page);
    }
    for (const entry of this.pending.values()) {
      if (list.includes(entry)) continue;
      const parent = entry.msg.parent_id;
      if (parent != null && !list.some((e) => e.msg.id === parent)) continue; // another branch
      list = list.concat([entry]);
    }
    this._setThread(list);
    return list;
  }

  /* An older page of the active branch (oldest first) goes before the thread. */
  prependOlder(messages) {
    const older = [];
    for (const msg of messages) {
      if (this.byId.has(msg.id)) continue;
      const result = this.upsert(msg, { place: false });
      if (result) older.push(result.entry);
    }
    if (older.length) this._setThread(older.concat(this.thread));
    return older;
  }

  // --- local sends -------------------------------------------------------------------------

  addPending({ content, client_id, conversation_id, created_at }) {
    const last = this.thread[this.thread.length - 1];
    const entry = newEntry({
      id: null,
      role: "user",
      content,
      status: "sending",
      client_id,
      conversation_id,
      parent_id: last && last.msg.id != null ? last.msg.id : undefined,
      created_at: created_at || new Date().toISOString(),
    });
    this.pending.set(client_id, entry);
    this._setThread(this.thread.concat([entry]));
    this.dirty.add(entry);
    return entry;
  }

  /* A pending send went again (same client_id: the server treats it as the same message). */
  resend(entry) {
    entry.error = null;
    entry.errorCode = null;
    entry.retryable = false;
    entry.msg.status = "sending";
    this.pending.set(entry.msg.client_id, entry);
    this.dirty.add(entry);
  }

  failPending(reason, { retryable = true, code = null } = {}) {
    for (const entry of this.pending.values()) {
      if (entry.msg.status !== "sending") continue;
      entry.msg.status = "failed";
      entry.error = reason;
      entry.errorCode = code;
      entry.retryable = retryable;
      this.dirty.add(entry);
    }
  }

  /* The content filter blocked the message being sent: it is kept, marked blocked (the
   * server's message.created replaces the local copy with the saved one). */
  blockPending(details) {
    const categories = (details && details.categories) || [];
    const sent = details && details.message_id != null ? this.byId.get(details.message_id) : null;
    const block = (entry) => {
      entry.msg.status = "blocked";
      entry.msg.safety = { flagged: true, categories };
      entry.retryable = false;
      this.dirty.add(entry);
    };
    if (sent) block(sent);
    for (const entry of this.pending.values()) if (entry.msg.status === "sending") block(entry);
  }

  // --- generations -------------------------------------------------------------------------

  started({ generation_id, message_id }) {
    this.genToMessage.set(generation_id, message_id);
    const entry = this.byId.get(message_id);
    if (entry) {
      entry.msg.generation_id = generation_id;
      if (statusRank(entry.msg.status) < 1) entry.msg.status = "streaming";
      entry.error = null;
      entry.errorCode = null;
      entry.retrying = false;
      this.dirty.add(entry);
    }
    return this._drain(generation_id);
  }

  /* Apply a `generation.delta`. Deltas are joined strictly in seq order: a repeat (seq at or
   * below the last applied) is dropped; one ahead of a gap waits until the gap fills (or the
   * reply's end replaces the text). Returns {entry, text} with the text appended now (maybe
   * several deltas), or {entry: null, gapAfter} when it waits; `gapAfter` (the last seq
   * applied) tells the caller to ask for `stream.resume` from there. */
  applyDelta(frame) {
    const gen = frame.generation_id;
    const entry = this.entryForGeneration(gen);
    const seq = Number(frame.seq) || 0;
    const last = this.lastSeq.get(gen) || 0;
    if (seq && seq <= last) return { entry: null, text: "" };
    if (!entry || (seq && seq > last + 1)) {
      let held = this.held.get(gen);
      if (!held) {
        held = new Map();
        this.held.set(gen, held);
      }
      held.set(seq, frame);
      return { entry: null, text: "", gapAfter: entry ? last : undefined };
    }
    if (statusRank(entry.msg.status) >= 2) {
      if (seq) this.lastSeq.set(gen, seq);
      return { entry: null, text: "" }; // already ended: the final text stands
    }
    if (entry.msg.status !== "streaming") this.dirty.add(entry);
    let text = frame.text || "";
    if (seq) this.lastSeq.set(gen, seq);
    text += this._takeHeld(gen);
    entry.msg.content = (entry.msg.content || "") + text;
    entry.msg.status = "streaming";
    entry.msg.seq = this.lastSeq.get(gen) || entry.msg.seq;
    return { entry, text };
  }

  // The held deltas that now follow on, joined; the seq advances past them.
  _takeHeld(gen) {
    const held = this.held.get(gen);
    if (!held) return "";
    let text = "";
    let last = this.lastSeq.get(gen) || 0;
    for (const seq of Array.from(held.keys())) if (seq && seq <= last) held.delete(seq);
    while (held.has(last + 1)) {
      text += held.get(last + 1).text || "";
      held.delete(last + 1);
      last += 1;
    }
    if (held.has(0)) {
      text += held.get(0).text || ""; // a delta without seq: as it came
      held.delete(0);
    }
    this.lastSeq.set(gen, last);
    if (!held.size) this.held.delete(gen);
    return text;
  }

  // Deltas that came before the store knew their message.
  _drain(gen) {
    const entry = this.entryForGeneration(gen);
    if (!entry || !this.held.has(gen)) return null;
    if (statusRank(entry.msg.status) >= 2) {
      this.held.delete(gen);
      return null;
    }
    const text = this._takeHeld(gen);
    if (!text) return null;
    entry.msg.content = (entry.msg.content || "") + text;
    entry.msg.status = "streaming";
    this.dirty.add(entry);
    return { entry, text };
  }

  /* `generation.completed` / `generation.cancelled`: the final message always wins. */
  ended(frame, status) {
    this.held.delete(frame.generation_id);
    if (frame.message) {
      const msg = Object.assign({}, frame.message);
      if (msg.generation_id == null) msg.generation_id = frame.generation_id;
      const entry = this.byId.get(msg.id);
      if (entry) entry.msg.status = null;
      const result = this.upsert(msg);
      return result ? result.entry : null;
    }
    const entry = this.entryForGeneration(frame.generation_id);
    if (entry) {
      entry.msg.status = status;
      this.dirty.add(entry);
    }
    return entry;
  }

  /* `generation.failed`: the message (with any text kept) and the error's code. */
  failed(frame) {
    this.held.delete(frame.generation_id);
    let entry = frame.message_id != null ? this.byId.get(frame.message_id) : null;
    entry = entry || this.entryForGeneration(frame.generation_id);
    const error = frame.error || {};
    if (frame.message && (entry || frame.message.id != null)) {
      if (entry) entry.msg.status = null;
      const result = this.upsert(Object.assign({ generation_id: frame.generation_id }, frame.message));
      entry = result ? result.entry : entry;
    }
    if (!entry) return null;
    if (entry.msg.status === "blocked") {
      // Stopped by the content filter: the text shown so far goes, the notice stays.
      entry.msg.content = "";
      entry.error = null;
      entry.errorCode = "content_blocked";
    } else {
      entry.msg.status = "failed";
      entry.error = error.message || "The reply could not be generated.";
      entry.errorCode = error.code || "llm_error";
    }
    this.dirty.add(entry);
    return entry;
  }

  flagged({ message_id, categories }) {
    const entry = this.byId.get(message_id);
    if (!entry) return null;
    entry.msg.safety = { flagged: true, categories: categories || [] };
    this.dirty.add(entry);
    return entry;
  }

  /* A new connection does not get the live deltas of a reply that started before it unless it
   * asks: the frames that replay what the page has not shown yet, then go live. */
  resumeFrames() {
    const frames = [];
    for (const entry of this.byId.values()) {
      const m = entry.msg;
      if (m.generation_id == null || (m.status !== "queued" && m.status !== "streaming")) continue;
      frames.push({
        type: "stream.resume",
        generation_id: m.generation_id,
        after_seq: this.lastSeq.get(m.generation_id) || 0,
      });
    }
    return frames;
  }
}

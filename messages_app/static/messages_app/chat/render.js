/* DOM of the thread: one view per store entry, kept in the thread's order. Message text goes in
 * with textContent (user messages) or through the sanitizing Markdown view (replies); nothing
 * from the server is ever inserted as raw HTML. */

export function make(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = text;
  return node;
}

export function formatTime(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  if (isNaN(d.getTime())) return "";
  const now = new Date();
  const time = d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  if (d.toDateString() === now.toDateString()) return time;
  return d.toLocaleDateString([], { month: "short", day: "numeric" }) + " " + time;
}

// Feather icons' thumbs (MIT), drawn with DOM calls: no emoji font needed.
const THUMB_UP =
  "M14 9V5a3 3 0 0 0-3-3l-4 9v11h11.28a2 2 0 0 0 2-1.7l1.38-9a2 2 0 0 0-2-2.3zM7 22H4a2 2 0 0 1-2-2v-7a2 2 0 0 1 2-2h3";
const THUMB_DOWN =
  "M10 15v4a3 3 0 0 0 3 3l4-9V2H5.72a2 2 0 0 0-2 1.7l-1.38 9a2 2 0 0 0 2 2.3zm7-13h2.67A2.31 2.31 0 0 1 22 4v7a2.31 2.31 0 0 1-2.33 2H17";

function icon(d) {
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", "0 0 24 24");
  svg.setAttribute("fill", "none");
  svg.setAttribute("stroke", "currentColor");
  svg.setAttribute("stroke-width", "2");
  svg.setAttribute("stroke-linecap", "round");
  svg.setAttribute("stroke-linejoin", "round");
  svg.setAttribute("aria-hidden", "true");
  const path = document.createElementNS(ns, "path");
  path.setAttribute("d", d);
  svg.appendChild(path);
  return svg;
}

function button(className, text, testid, label) {
  const b = make("button", className, text);
  b.type = "button";
  if (testid) b.setAttribute("data-testid", testid);
  if (label) {
    b.setAttribute("aria-label", label);
    b.title = label;
  }
  return b;
}

function usageText(msg) {
  const u = msg.usage || {};
  if (typeof u.prompt_tokens !== "number" && typeof u.completion_tokens !== "number") return null;
  return (u.prompt_tokens || 0) + " in, " + (u.completion_tokens || 0) + " out";
}

function ms(value) {
  if (typeof value !== "number") return null;
  return value < 1000 ? Math.round(value) + " ms" : (value / 1000).toFixed(1) + " s";
}

/* What a person reads about a message's state ("" when there is nothing to say). */
export function statusWords(entry) {
  const msg = entry.msg;
  const role = msg.role || "assistant";
  const cats = (msg.safety && msg.safety.categories) || [];
  const why = cats.length ? " (" + cats.join(", ") + ")" : "";
  switch (msg.status) {
    case "sending":
      return "Sending…";
    case "queued":
      return role === "assistant" ? "Waiting for the reply…" : "";
    case "streaming":
      return "Writing…";
    case "cancelled":
      return "Stopped";
    case "failed":
      return role === "assistant" ? "Couldn't finish" : "Not sent";
    case "blocked":
      return "Blocked by the content filter" + why;
    default:
      return "";
  }
}

/* The notice under a message's text: why it failed, was blocked, or was not sent. */
export function noticeText(entry) {
  const msg = entry.msg;
  const role = msg.role || "assistant";
  if (msg.status === "blocked") {
    const cats = (msg.safety && msg.safety.categories) || [];
    const why = cats.length ? " (" + cats.join(", ") + ")" : "";
    return role === "assistant"
      ? "This reply was stopped and hidden by the content filter" + why + "."
      : "Blocked by the content filter" + why +
          ": this message was not sent to the character. Moderators will review it.";
  }
  if (entry.error) {
    if (role === "assistant") return "Couldn't finish: " + entry.error;
    return entry.error;
  }
  if (msg.status === "failed" && role === "assistant") return "Couldn't finish this reply.";
  return "";
}

/* Rows of the details popover: [label, value]. */
export function detailRows(entry) {
  const msg = entry.msg;
  const t = msg.timings || {};
  const rows = [
    ["Sent", msg.created_at ? new Date(msg.created_at).toLocaleString() : null],
    ["Model", msg.model || null],
    ["Status", msg.status || null],
    ["Finish reason", msg.finish_reason || null],
    ["Tokens", usageText(msg)],
    ["Waiting in queue", ms(t.queued_ms)],
    ["First token after", ms(t.ttft_ms)],
    ["Total time", ms(t.total_ms)],
    ["Error", entry.errorCode || null],
    ["Flagged", msg.safety && msg.safety.flagged ? (msg.safety.categories || []).join(", ") || "yes" : null],
    ["Message id", msg.id != null ? String(msg.id) : null],
  ];
  return rows.filter((row) => row[1]);
}

/* Plain text content, appended to in place while it streams. */
export class TextView {
  constructor(node) {
    this.node = node;
    this.text = "";
  }
  set(text) {
    text = text || "";
    if (text === this.text) return;
    if (text.startsWith(this.text)) return this.append(text.slice(this.text.length));
    this.node.textContent = text;
    this.text = text;
  }
  append(text) {
    if (!text) return;
    this.node.appendChild(document.createTextNode(text));
    this.text += text;
  }
}


function copyIcon() {
  return icon("M20 9h-9a2 2 0 0 0-2 2v9a2 2 0 0 0 2 2h9a2 2 0 0 0 2-2v-9a2 2 0 0 0-2-2zM5 15H4a2 2 0 0 1-2-2V4a2 2 0 0 1 2-2h9a2 2 0 0 1 2 2v1");
}

export class ThreadView {
  /* `container` holds the message elements. `actions` are the callbacks of the controls:
   * feedback(entry, rating), report(entry), retry(entry) (a send that failed), regenerate(entry)
   * (also Retry of a failed reply), edit(entry, text), branch(entry, delta), copy(text).
   * `contentView(node, role)` makes the view of a message's text. `canAct()` says whether
   * controls that start a reply are usable now. */
  constructor(container, actions, { contentView, canAct } = {}) {
    this.container = container;
    this.actions = actions;
    this.contentView = contentView || ((node) => new TextView(node));
    this.canAct = canAct || (() => true);
    this.views = new Map(); // entry key -> view
    this.lastReplyKey = null;
  }

  clear() {
    this.views.clear();
    this.container.textContent = "";
  }

  view(entry) {
    let view = this.views.get(entry.key);
    if (!view) {
      view = this._build(entry);
      this.views.set(entry.key, view);
    }
    return view;
  }

  /* Make the DOM follow the thread's order: entries off the thread leave the page. */
  sync(thread) {
    const keep = new Set(thread.map((e) => e.key));
    for (const [key, view] of this.views) {
      if (!keep.has(key)) {
        view.node.remove();
        this.views.delete(key);
      }
    }
    let cursor = this.container.firstChild;
    for (const entry of thread) {
      const fresh = !this.views.has(entry.key);
      const view = this.view(entry);
      if (fresh) this.update(entry);
      if (view.node === cursor) {
        cursor = cursor.nextSibling;
      } else {
        this.container.insertBefore(view.node, cursor);
      }
    }
  }

  /* The entry whose reply may be regenerated (the thread's last, when it is a reply). */
  setLastReply(entry) {
    const key = entry ? entry.key : null;
    if (key === this.lastReplyKey) return [];
    const old = this.lastReplyKey;
    this.lastReplyKey = key;
    return [old, key].filter(Boolean);
  }

  _build(entry) {
    const node = make("div", "msg");
    node.setAttribute("data-testid", "message");
    const bubble = make("div", "bubble");
    const content = make("div", "content");
    content.setAttribute("data-testid", "message-content");
    const error = make("div", "error");
    error.setAttribute("data-testid", "message-error");
    error.hidden = true;
    const errorText = make("span", "error-text");
    const retry = button("link-button retry", "Retry", "retry");
    retry.hidden = true;
    error.append(errorText, retry);
    bubble.append(content, error);

    const editor = make("form", "edit-form");
    editor.hidden = true;
    const editLabel = make("label", "visually-hidden", "Edit your message");
    const editBox = make("textarea");
    editBox.rows = 3;
    editBox.setAttribute("data-testid", "edit-text");
    editLabel.htmlFor = editBox.id = "edit-" + entry.key;
    const save = make("button", "primary", "Save & send");
    save.type = "submit";
    save.setAttribute("data-testid", "edit-save");
    const cancel = button(null, "Cancel", "edit-cancel");
    const editRow = make("div", "edit-row");
    editRow.append(cancel, save);
    editor.append(editLabel, editBox, editRow);

    const foot = make("div", "meta-row");
    const branch = make("span", "branch");
    branch.setAttribute("role", "group");
    branch.setAttribute("aria-label", "Alternatives");
    branch.hidden = true;
    const prev = button("icon-button", "‹", "branch-prev", "Previous alternative");
    const label = make("span", "branch-label");
    label.setAttribute("data-testid", "branch-label");
    const next = button("icon-button", "›", "branch-next", "Next alternative");
    branch.append(prev, label, next);
    const status = make("span", "status-word");
    status.setAttribute("data-testid", "message-status");
    const meta = make("span", "meta");
    meta.setAttribute("data-testid", "message-meta");
    const actions = make("span", "actions");
    const copy = button("icon-button", null, "copy", "Copy message");
    copy.appendChild(copyIcon());
    const edit = button("link-button", "Edit", "edit", "Edit and resend");
    const regenerate = button("link-button", "Regenerate", "regenerate", "Write another reply");
    const details = make("details", "msg-details");
    const summary = make("summary", null, "Details");
    summary.setAttribute("data-testid", "details");
    const dl = make("dl");
    dl.setAttribute("data-testid", "details-body");
    details.append(summary, dl);
    const feedback = make("span", "feedback");
    feedback.hidden = true;
    const up = button("icon-button", null, "feedback-up", "Good reply");
    up.appendChild(icon(THUMB_UP));
    const down = button("icon-button", null, "feedback-down", "Bad reply");
    down.appendChild(icon(THUMB_DOWN));
    feedback.append(up, down);
    const report = button("link-button report", "Report", "report");
    report.title = "Report this reply to the moderators";
    report.hidden = true;
    actions.append(copy, edit, regenerate, feedback, report, details);
    foot.append(branch, status, meta, actions);
    node.append(bubble, editor, foot);

    const view = {
      node, bubble, content, text: this.contentView(content, entry.msg.role), error, errorText,
      retry, editor, editBox, branch, prev, next, label, status, meta, copy, edit, regenerate,
      details, dl, feedback, up, down, report,
    };
    up.addEventListener("click", () => this.actions.feedback(entry, 1));
    down.addEventListener("click", () => this.actions.feedback(entry, -1));
    report.addEventListener("click", () => this.actions.report(entry));
    retry.addEventListener("click", () => {
      if (entry.msg.role === "user") this.actions.retry(entry);
      else this.actions.regenerate(entry);
    });
    regenerate.addEventListener("click", () => this.actions.regenerate(entry));
    copy.addEventListener("click", () => this.actions.copy(entry.msg.content || ""));
    prev.addEventListener("click", () => this.actions.branch(entry, -1));
    next.addEventListener("click", () => this.actions.branch(entry, 1));
    edit.addEventListener("click", () => this.openEditor(entry));
    cancel.addEventListener("click", () => this.closeEditor(entry));
    editor.addEventListener("submit", (event) => {
      event.preventDefault();
      const text = editBox.value;
      if (!text.trim()) return;
      this.actions.edit(entry, text);
    });
    editBox.addEventListener("keydown", (event) => {
      if (event.key === "Escape") {
        event.preventDefault();
        event.stopPropagation();
        this.closeEditor(entry);
      } else if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        editor.requestSubmit();
      }
    });
    details.addEventListener("toggle", () => {
      if (details.open) this._fillDetails(entry, view);
    });
    return view;
  }

  openEditor(entry) {
    const view = this.views.get(entry.key);
    if (!view) return;
    view.editBox.value = entry.msg.content || "";
    view.editor.hidden = false;
    view.bubble.hidden = true;
    view.editBox.focus();
  }

  closeEditor(entry) {
    const view = this.views.get(entry.key);
    if (!view) return;
    view.editor.hidden = true;
    view.bubble.hidden = false;
    view.edit.focus();
  }

  _fillDetails(entry, view) {
    view.dl.textContent = "";
    for (const [label, value] of detailRows(entry)) {
      view.dl.append(make("dt", null, label), make("dd", null, value));
    }
  }

  /* Text that streamed in: appended, nothing else redrawn. */
  append(entry, text) {
    const view = this.views.get(entry.key);
    if (view) view.text.append(text);
  }

  update(entry) {
    const view = this.views.get(entry.key);
    if (!view) return;
    const msg = entry.msg;
    const role = msg.role || "assistant";
    const live = msg.status === "sending" || msg.status === "queued" || msg.status === "streaming";
    view.node.className = "msg msg-" + role;
    view.node.setAttribute("data-role", role);
    view.node.setAttribute("data-status", msg.status || "");
    // The reply to a message the content filter blocked has nothing to show.
    view.node.hidden =
      role === "assistant" && msg.status === "blocked" && msg.finish_reason === "input_blocked";
    if (msg.id != null) view.node.setAttribute("data-id", String(msg.id));
    if (msg.generation_id != null) {
      view.node.setAttribute("data-generation-id", String(msg.generation_id));
    }
    view.text.set(msg.content || "", !live);

    const notice = noticeText(entry);
    view.errorText.textContent = notice;
    view.error.hidden = !notice;
    const failedReply = role === "assistant" && msg.status === "failed" && msg.id != null;
    view.retry.hidden = !(entry.retryable || failedReply);

    const sib = msg.siblings;
    const many = !!(sib && sib.total > 1);
    view.branch.hidden = !many;
    if (many) {
      view.label.textContent = sib.position + "/" + sib.total;
      view.label.setAttribute("aria-label", "Alternative " + sib.position + " of " + sib.total);
      view.prev.disabled = sib.position <= 1 || live;
      view.next.disabled = sib.position >= sib.total || live;
    }
    view.status.textContent = statusWords(entry);
    view.meta.textContent = formatTime(msg.created_at);
    view.copy.hidden = !msg.content;
    const act = this.canAct();
    view.edit.hidden = !(role === "user" && msg.id != null && msg.status !== "sending");
    view.edit.disabled = !act;
    view.regenerate.hidden = !(
      role === "assistant" && msg.id != null && !live && entry.key === this.lastReplyKey &&
      msg.parent_id != null && msg.status !== "failed"
    );
    view.regenerate.disabled = !act;
    view.retry.disabled = !act && (failedReply || entry.msg.status === "failed");
    view.details.hidden = msg.id == null;
    if (!live) this._fillDetails(entry, view); // ready before the popover opens
    const canRate = role === "assistant" && msg.status === "completed" && msg.id != null;
    view.feedback.hidden = !canRate;
    view.report.hidden = !(
      role === "assistant" && msg.id != null &&
      (msg.status === "completed" || msg.status === "cancelled") && !entry.reported
    );
    view.up.classList.toggle("selected", entry.rating === 1);
    view.down.classList.toggle("selected", entry.rating === -1);
    view.up.setAttribute("aria-pressed", String(entry.rating === 1));
    view.down.setAttribute("aria-pressed", String(entry.rating === -1));
  }
}

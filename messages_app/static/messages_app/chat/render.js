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
  finish() {}
}

function metaText(entry) {
  const msg = entry.msg;
  const bits = [msg.role];
  if (msg.status === "sending") bits.push("sending…");
  else if (msg.status) bits.push(msg.status);
  const timings = msg.timings || {};
  if (msg.status === "completed" && msg.role === "assistant" && typeof timings.total_ms === "number") {
    bits.push(Math.round(timings.total_ms) + " ms");
  }
  if (msg.safety && msg.safety.flagged) bits.push("flagged");
  const when = formatTime(msg.created_at);
  if (when) bits.push(when);
  return bits.join(" · ");
}

export class ThreadView {
  /* `container` holds the message elements; `actions` are the callbacks of the controls:
   * feedback(entry, rating), report(entry), retry(entry). `contentView(node, role)` makes the
   * view of a message's text. */
  constructor(container, actions, { contentView } = {}) {
    this.container = container;
    this.actions = actions;
    this.contentView = contentView || ((node) => new TextView(node));
    this.views = new Map(); // entry key -> view
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

  _build(entry) {
    const node = make("div", "msg");
    node.setAttribute("data-testid", "message");
    const bubble = make("div", "bubble");
    const content = make("div", "content");
    content.setAttribute("data-testid", "message-content");
    const error = make("div", "error");
    error.setAttribute("data-testid", "message-error");
    error.hidden = true;
    bubble.append(content, error);
    const metaRow = make("div", "meta-row");
    const meta = make("span", "meta");
    meta.setAttribute("data-testid", "message-meta");
    const feedback = make("span", "feedback");
    feedback.hidden = true;
    const up = button(null, null, "feedback-up", "Good reply");
    up.appendChild(icon(THUMB_UP));
    const down = button(null, null, "feedback-down", "Bad reply");
    down.appendChild(icon(THUMB_DOWN));
    feedback.append(up, down);
    const report = button("link-button report", "Report", "report");
    report.title = "Report this reply to the moderators";
    report.hidden = true;
    metaRow.append(meta, feedback, report);
    node.append(bubble, metaRow);
    up.addEventListener("click", () => this.actions.feedback(entry, 1));
    down.addEventListener("click", () => this.actions.feedback(entry, -1));
    report.addEventListener("click", () => this.actions.report(entry));
    return {
      node,
      content,
      text: this.contentView(content, entry.msg.role),
      error,
      meta,
      feedback,
      up,
      down,
      report,
    };
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
    view.text.set(msg.content || "");

    let errorText = entry.error;
    if (!errorText && msg.status === "failed" && role === "assistant") {
      errorText = "The reply could not be generated.";
    }
    if (!errorText && msg.status === "blocked") {
      const cats = (msg.safety && msg.safety.categories) || [];
      const why = cats.length ? " (" + cats.join(", ") + ")" : "";
      errorText =
        role === "assistant"
          ? "This reply was stopped and hidden by the content filter" + why + "."
          : "This message was blocked by the content filter" +
            why +
            " and was not sent to the character. Moderators will review it.";
    }
    view.error.textContent = errorText || "";
    view.error.hidden = !errorText;
    if (entry.retryable) {
      const retry = button("link-button", "Retry", "retry");
      retry.style.marginLeft = "6px";
      retry.addEventListener("click", () => this.actions.retry(entry));
      view.error.appendChild(retry);
    }
    view.meta.textContent = metaText(entry);
    const canRate = role === "assistant" && msg.status === "completed" && msg.id != null;
    view.feedback.hidden = !canRate;
    view.report.hidden = !(
      role === "assistant" &&
      msg.id != null &&
      (msg.status === "completed" || msg.status === "cancelled") &&
      !entry.reported
    );
    view.up.classList.toggle("selected", entry.rating === 1);
    view.down.classList.toggle("selected", entry.rating === -1);
  }
}

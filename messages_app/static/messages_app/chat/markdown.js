/* Markdown of the replies: marked, then DOMPurify, always; highlight.js for code blocks, loaded
 * once the first code block is shown.
 *
 * While a reply streams, the view does not re-render the whole message per delta (that is
 * quadratic in the reply's length). The text is cut at block boundaries (a blank line, a code
 * fence's start and end): blocks before the last boundary are rendered once and kept; only the
 * trailing block is rendered again, at most once per animation frame, and an open code fence's
 * text is only appended to. When the reply ends, the whole text is rendered once, so that
 * what spans blocks (a loose list, a reference link) comes out as marked means it. */

import { Marked } from "../vendor/marked/marked.esm.js";
import "../vendor/dompurify/purify.min.js"; // UMD: defines globalThis.DOMPurify
import { BlockScanner } from "./blocks.js";

const DOMPurify = globalThis.DOMPurify;

function escapeHtml(text) {
  return String(text)
    .replace(/&/g, "&amp;")
    .replace(/</g, "&lt;")
    .replace(/>/g, "&gt;")
    .replace(/"/g, "&quot;");
}

const marked = new Marked({
  gfm: true,
  breaks: true,
  renderer: {
    // Raw HTML in a reply is shown as text, never parsed (DOMPurify would also clean it).
    html(token) {
      return escapeHtml(token.text);
    },
    // No remote images: an image URL made up by the model could carry the chat away.
    image(token) {
      return `<a href="${escapeHtml(token.href)}">${escapeHtml(token.text || "image")}</a>`;
    },
  },
});

const PURIFY = {
  FORBID_TAGS: ["style", "img", "svg", "math", "form", "input", "button", "textarea", "select", "iframe", "video", "audio"],
  FORBID_ATTR: ["style"],
  ALLOW_DATA_ATTR: false,
  RETURN_DOM_FRAGMENT: true,
};

DOMPurify.addHook("afterSanitizeAttributes", (node) => {
  if (node.tagName === "A") {
    node.setAttribute("target", "_blank");
    node.setAttribute("rel", "noopener noreferrer nofollow");
  }
});

/* Markdown text to a sanitized DocumentFragment. */
export function renderMarkdown(text) {
  return DOMPurify.sanitize(marked.parse(text || ""), PURIFY);
}

// --- code blocks: highlighting and a copy button -------------------------------------------------

let hljs = null;
let hljsLoading = null;
const waiting = new Set();
const AUTO_MAX = 3000; // guessing a language is costly: only for short blocks

function highlightNow(code) {
  const match = /\blanguage-([\w+#.-]+)/.exec(code.className);
  const lang = match && hljs.getLanguage(match[1]) ? match[1] : null;
  if (!lang && (code.textContent.length > AUTO_MAX || !code.textContent.trim())) return;
  if (!lang) code.classList.add("hljs-auto");
  hljs.highlightElement(code); // escapes the text itself; its markup is spans only
}

function highlight(code) {
  if (hljs) return highlightNow(code);
  waiting.add(code);
  if (!hljsLoading) {
    hljs_load();
  }
}

function hljs_load() {
  hljsLoading = import("../vendor/highlight/highlight.min.js")
    .then((module) => {
      hljs = module.default;
      hljs.configure({ ignoreUnescapedHTML: true });
      for (const code of waiting) if (code.isConnected) highlightNow(code);
      waiting.clear();
    })
    .catch(() => {
      waiting.clear(); // no colours, the code still shows
    });
}

/* Give each <pre> of `root` a copy button and highlighting. */
export function decorateCode(root) {
  for (const pre of root.querySelectorAll("pre")) {
    if (pre.parentElement && pre.parentElement.classList.contains("code-block")) continue;
    const code = pre.querySelector("code") || pre;
    const wrap = document.createElement("div");
    wrap.className = "code-block";
    const bar = document.createElement("div");
    bar.className = "code-bar";
    const match = /\blanguage-([\w+#.-]+)/.exec(code.className || "");
    const lang = document.createElement("span");
    lang.className = "code-lang";
    lang.textContent = match ? match[1] : "";
    const copy = document.createElement("button");
    copy.type = "button";
    copy.className = "copy-code";
    copy.textContent = "Copy";
    copy.setAttribute("data-testid", "copy-code");
    copy.setAttribute("aria-label", "Copy code");
    bar.append(lang, copy);
    pre.replaceWith(wrap);
    wrap.append(bar, pre);
    highlight(code);
  }
}

// --- the streaming view ----------------------------------------------------------------------------

// A trailing block longer than this streams as plain text until it ends (then it is rendered
// once): rendering it again per frame would cost its length per frame.
const TAIL_LIVE_MAX = 2000;
const PLAIN_CHUNK = 600; // characters before a plain chunk may end at a sentence's end

// Bench hook (bench/page.py): with globalThis.__chatPerf set, each flush records
// [text length, ms]. One property read when unset.
function perf() {
  return globalThis.__chatPerf || null;
}
const schedule =
  typeof requestAnimationFrame === "function" ? requestAnimationFrame : (fn) => setTimeout(fn, 16);

export class MarkdownView {
  constructor(node) {
    this.node = node;
    this.reset("");
  }

  reset(text) {
    this.text = text;
    this.node.textContent = "";
    this.stable = document.createElement("div"); // blocks rendered for good
    this.stable.className = "md-stable";
    this.tail = document.createElement("div"); // the block being written
    this.tail.className = "md-tail";
    this.node.append(this.stable, this.tail);
    this.stableEnd = 0; // text[0:stableEnd] is rendered in this.stable
    this.blocks = new BlockScanner();
    this.fenceCode = null; // text node of the open fence's code in the tail, appended to
    this.fenceShown = 0; // text up to here is in fenceCode
    this.plain = null; // text node of a long trailing block shown as plain text, appended to
    this.plainShown = 0;
    this.plainBox = null;
    this.final = false;
    this.pending = false;
  }

  /* The whole text; `final` once the message ended. */
  set(text, final) {
    text = text || "";
    if (final) {
      if (this.final && text === this.text) return;
      this.text = text;
      this.final = true;
      this.renderAll();
      return;
    }
    if (this.final || !text.startsWith(this.text)) this.reset("");
    this.append(text.slice(this.text.length));
  }

  append(text) {
    if (!text) return;
    this.text += text;
    if (!this.pending) {
      this.pending = true;
      schedule(() => this.flush());
    }
  }

  renderAll() {
    const p = perf();
    const t0 = p ? performance.now() : 0;
    this.pending = false;
    this.node.textContent = "";
    const fragment = renderMarkdown(this.text);
    this.node.appendChild(fragment);
    decorateCode(this.node);
    if (p && p.finals) p.finals.push([this.text.length, performance.now() - t0]);
  }

  // A long trailing block, as plain text, in chunks of their own (cut after a sentence): a
  // browser lays out only the chunk that grows, not the whole block, per frame.
  _plainChunk() {
    const chunk = document.createElement("span");
    chunk.className = "md-plain-chunk";
    this.plain = document.createTextNode("");
    chunk.appendChild(this.plain);
    this.plainBox.appendChild(chunk);
  }

  _plainAppend(text) {
    while (text) {
      if (this.plain.length < PLAIN_CHUNK) {
        this.plain.appendData(text);
        return;
      }
      // After a sentence's end; in a chunk twice too long, after any space.
      let match = /[.!?…]\s|\n/.exec(text);
      if (!match && this.plain.length >= 2 * PLAIN_CHUNK) match = /\s/.exec(text);
      if (!match) {
        this.plain.appendData(text);
        return;
      }
      const at = match.index + match[0].length;
      this.plain.appendData(text.slice(0, at));
      text = text.slice(at);
      this._plainChunk();
    }
  }

  flush() {
    this.pending = false;
    if (this.final) return;
    const p = perf();
    const t0 = p ? performance.now() : 0;
    this._flush();
    if (p) p.frames.push([this.text.length, performance.now() - t0]);
  }

  _flush() {
    const boundary = this.blocks.scan(this.text);
    if (boundary > this.stableEnd) {
      const chunk = this.text.slice(this.stableEnd, boundary);
      if (chunk.trim()) {
        const fragment = renderMarkdown(chunk);
        const holder = document.createElement("div");
        holder.className = "md-block";
        holder.appendChild(fragment);
        decorateCode(holder);
        this.stable.appendChild(holder);
      }
      this.stableEnd = boundary;
      this.fenceCode = null;
      this.plain = null;
    }
    const tailText = this.text.slice(this.stableEnd);
    if (this.blocks.inFence) {
      // An open code fence: its text so far, appended as plain text (highlighted once closed).
      if (!this.fenceCode) {
        this.tail.textContent = "";
        const pre = document.createElement("pre");
        const code = document.createElement("code");
        this.fenceCode = document.createTextNode("");
        code.appendChild(this.fenceCode);
        pre.appendChild(code);
        this.tail.appendChild(pre);
        const firstLine = tailText.indexOf("\n");
        this.fenceShown = firstLine < 0 ? tailText.length : firstLine + 1;
      }
      if (tailText.length > this.fenceShown) {
        this.fenceCode.appendData(tailText.slice(this.fenceShown)); // one text node, grown
        this.fenceShown = tailText.length;
      }
      return;
    }
    if (this.plain || tailText.length > TAIL_LIVE_MAX) {
      if (!this.plain) {
        this.tail.textContent = "";
        this.plainBox = document.createElement("div");
        this.plainBox.className = "md-plain";
        this.tail.appendChild(this.plainBox);
        this.plainShown = 0;
        this._plainChunk();
      }
      this._plainAppend(tailText.slice(this.plainShown));
      this.plainShown = tailText.length;
      return;
    }
    this.tail.textContent = "";
    if (tailText) this.tail.appendChild(renderMarkdown(tailText));
  }
}

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

const FENCE = /^ {0,3}(`{3,}|~{3,})/;
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
    this.scanPos = 0; // lines before this were scanned for boundaries
    this.fence = null; // the open fence's marker ("```"), if any
    this.boundary = 0; // the last block boundary found
    this.fenceCode = null; // <code> of the open fence in the tail, appended to
    this.fenceShown = 0; // text up to here is in fenceCode
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
    this.pending = false;
    this.node.textContent = "";
    const fragment = renderMarkdown(this.text);
    this.node.appendChild(fragment);
    decorateCode(this.node);
  }

  // Find the block boundaries in the complete lines written since the last scan.
  scan() {
    const text = this.text;
    let start = this.scanPos;
    for (;;) {
      const end = text.indexOf("\n", start);
      if (end < 0) break;
      const line = text.slice(start, end);
      const fence = FENCE.exec(line);
      if (this.fence) {
        if (fence && fence[1][0] === this.fence[0] && fence[1].length >= this.fence.length && !line.slice(fence[0].length).trim()) {
          this.fence = null;
          this.boundary = end + 1;
        }
      } else if (fence) {
        this.fence = fence[1];
        this.boundary = start;
      } else if (!line.trim()) {
        this.boundary = end + 1;
      }
      start = end + 1;
    }
    this.scanPos = start;
  }

  flush() {
    this.pending = false;
    if (this.final) return;
    this.scan();
    if (this.boundary > this.stableEnd) {
      const chunk = this.text.slice(this.stableEnd, this.boundary);
      if (chunk.trim()) {
        const fragment = renderMarkdown(chunk);
        const holder = document.createElement("div");
        holder.className = "md-block";
        holder.appendChild(fragment);
        decorateCode(holder);
        this.stable.appendChild(holder);
      }
      this.stableEnd = this.boundary;
      this.fenceCode = null;
    }
    const tailText = this.text.slice(this.stableEnd);
    if (this.fence) {
      // An open code fence: its text so far, appended as plain text (highlighted once closed).
      if (!this.fenceCode) {
        this.tail.textContent = "";
        const pre = document.createElement("pre");
        this.fenceCode = document.createElement("code");
        pre.appendChild(this.fenceCode);
        this.tail.appendChild(pre);
        const firstLine = tailText.indexOf("\n");
        this.fenceShown = firstLine < 0 ? tailText.length : firstLine + 1;
      }
      if (tailText.length > this.fenceShown) {
        this.fenceCode.appendChild(document.createTextNode(tailText.slice(this.fenceShown)));
        this.fenceShown = tailText.length;
      }
      return;
    }
    this.tail.textContent = "";
    if (tailText) this.tail.appendChild(renderMarkdown(tailText));
  }
}

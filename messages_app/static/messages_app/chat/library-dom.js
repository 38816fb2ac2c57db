/* DOM helpers shared by the conversation list and the character gallery and editor: elements
 * built from attributes and text (never HTML), avatars, and the library's stylesheet. */

/** An element with attributes (null/undefined/false skipped) and children (strings are text). */
export function h(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.className = value;
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

/** library.css, once, next to this module, unless the page links it already (the chat
 * template does, under its hashed static name, so it is styled before the first paint). */
export function ensureLibraryStyles() {
  const href = new URL("./library.css", import.meta.url).href;
  for (const link of document.querySelectorAll('link[rel="stylesheet"]')) {
    if (link.href === href || /\/chat\/library(\.[0-9a-f]+)?\.css$/.test(new URL(link.href).pathname)) return;
  }
  document.head.appendChild(h("link", { rel: "stylesheet", href }));
}

function hue(text) {
  let n = 0;
  for (const ch of text) n = (n * 31 + ch.codePointAt(0)) % 360;
  return n;
}

/** An avatar: the character's image, or its initial on a colour taken from its name. */
export function avatarElement(character, className) {
  const name = (character && character.name) || "?";
  const wrap = h("span", { class: `lib-avatar ${className || ""}`.trim(), "aria-hidden": "true" });
  if (character && character.avatar_url) {
    const img = h("img", { src: character.avatar_url, alt: "", loading: "lazy", decoding: "async" });
    img.addEventListener("error", () => {
      img.remove();
      wrap.classList.add("lib-avatar-letter");
      wrap.textContent = initial(name);
    }, { once: true });
    wrap.append(img);
  } else {
    wrap.classList.add("lib-avatar-letter");
    wrap.style.setProperty("--avatar-hue", String(hue(name)));
    wrap.textContent = initial(name);
  }
  return wrap;
}

function initial(name) {
  const first = Array.from(name.trim())[0];
  return first ? first.toLocaleUpperCase() : "?";
}

/** What a person reads of a failure: the server's message. */
export function errorText(err) {
  return (err && err.message) || "Something went wrong.";
}

/** A paginated answer (or a plain list) as {results, next}. */
export function pageOf(data) {
  if (Array.isArray(data)) return { results: data, next: null };
  return { results: (data && data.results) || [], next: (data && data.next) || null };
}

let uid = 0;
/** A page-unique element id. */
export function nextId(prefix) {
  uid += 1;
  return `${prefix}-${uid}`;
}

/* The character gallery (a minimal version: the lib helper's module replaces it, keeping
 * mountCharacterGallery's signature and the data-testid hooks). */

function make(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = text;
  return node;
}

/* Mount the gallery in `sectionEl` (hidden until open()). Returns {open(), refresh()}. */
export function mountCharacterGallery(sectionEl, { api, onStartChat, onClose }) {
  const head = make("div", "gallery-head");
  const title = make("h2", null, "Characters");
  const close = make("button", null, "Close");
  close.type = "button";
  close.addEventListener("click", () => onClose());
  head.append(title, close);
  const grid = make("ul", "character-grid");
  sectionEl.textContent = "";
  sectionEl.append(head, grid);

  async function refresh() {
    grid.textContent = "";
    let characters;
    try {
      characters = await api.listAllCharacters();
    } catch (err) {
      grid.appendChild(make("li", "muted", "Could not load characters: " + err.message));
      return;
    }
    if (!characters.length) grid.appendChild(make("li", "muted", "No characters available."));
    for (const c of characters) {
      const li = make("li", "character-card");
      li.setAttribute("data-testid", "character-card");
      li.setAttribute("data-id", String(c.id));
      li.appendChild(make("h3", null, c.name));
      if (c.description) li.appendChild(make("p", "small muted", c.description));
      const start = make("button", "primary", "Chat");
      start.type = "button";
      start.setAttribute("aria-label", "Chat with " + c.name);
      start.addEventListener("click", () => onStartChat(c.id));
      li.appendChild(start);
      grid.appendChild(li);
    }
  }

  return {
    open() {
      sectionEl.hidden = false;
      refresh();
      close.focus();
    },
    refresh,
  };
}

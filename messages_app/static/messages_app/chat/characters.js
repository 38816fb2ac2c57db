/* The character gallery: cards with avatar, name, description and greeting; "Chat" starts a
 * conversation; a dialog creates and edits characters (with the model settings the server
 * allows, its validation errors shown by field, and an avatar upload); cards import from a
 * PNG or JSON file (file input or drag and drop) and export as PNG and JSON.
 *
 * Every server string goes into the DOM as text (textContent, attributes), never as HTML.
 */
import { createEditor } from "./character-editor.js";
import { avatarElement, ensureLibraryStyles, errorText, h, nextId, pageOf } from "./library-dom.js";

// --- the gallery -----------------------------------------------------------------------------

/**
 * Mount the gallery into `sectionEl`.
 * options: { api, onStartChat(characterId), onClose() }
 * returns { open(), refresh(), close() }
 */
export function mountCharacterGallery(sectionEl, options) {
  const { api, onStartChat, onClose } = options;
  ensureLibraryStyles();

  const state = {
    items: new Map(), // id -> character, in the server's order
    next: null,
    loaded: false,
    loading: null,
    allowedProviders: null,
    allowedModels: null,
  };

  sectionEl.textContent = "";
  sectionEl.classList.add("cg");
  const headingId = nextId("cg-heading");
  const heading = h("h2", { id: headingId, class: "cg-title", tabindex: "-1" }, "Characters");
  if (!sectionEl.hasAttribute("aria-labelledby") && !sectionEl.hasAttribute("aria-label")) {
    sectionEl.setAttribute("aria-labelledby", headingId);
  }

  const newButton = h("button", { type: "button", class: "primary", "data-testid": "character-new" }, "New character");
  const fileInput = h("input", {
    type: "file",
    id: nextId("cg-import"),
    class: "visually-hidden",
    accept: ".png,.json,image/png,application/json",
    tabindex: "-1", // reached through the Import button; the input itself is hidden
    "data-testid": "character-import",
  });
  const importButton = h("button", { type: "button", "data-testid": "character-import-button" }, "Import card…");
  const closeButton = h("button", { type: "button", class: "cg-close", "data-testid": "character-gallery-close" }, "Back to chat");
  const importStatus = h("p", { class: "cg-import-status", role: "status", "data-testid": "character-import-status" });
  const importError = h("div", { class: "cg-import-error", role: "alert", "data-testid": "character-import-error", hidden: "" });
  const dropHint = h("p", { class: "cg-drop-hint" },
    "Import a character card (PNG or JSON, V1/V2/V3) with the button above, or drop the file here.");
  const grid = h("ul", { class: "cg-grid", "data-testid": "character-grid", "aria-labelledby": headingId });
  const empty = h("p", { class: "cg-empty muted", hidden: "" }, "No characters yet. Create one, or import a card.");
  const more = h("button", { type: "button", class: "link-button cg-more", hidden: "" }, "Load more");
  const listStatus = h("p", { class: "cg-status", role: "status" });

  sectionEl.append(
    h("header", { class: "cg-header" },
      heading,
      h("div", { class: "cg-toolbar" },
        newButton,
        h("label", { for: fileInput.id, class: "visually-hidden" }, "Import a character card (PNG or JSON)"),
        fileInput,
        importButton,
        closeButton)),
    dropHint,
    importError,
    importStatus,
    listStatus,
    grid,
    empty,
    more,
  );

  // --- cards ---------------------------------------------------------------------------------

  function cardElement(character) {
    const nameId = nextId("cg-name");
    const chat = h("button", { type: "button", class: "primary", "data-testid": "character-chat", "aria-describedby": nameId }, "Chat");
    chat.addEventListener("click", async () => {
      chat.disabled = true;
      try {
        await onStartChat(character.id);
      } finally {
        chat.disabled = false;
      }
    });
    const actions = [chat];
    if (character.is_owner) {
      const edit = h("button", { type: "button", "data-testid": "character-edit", "aria-describedby": nameId }, "Edit");
      edit.addEventListener("click", () => editor.open(character, edit));
      actions.push(edit);
      actions.push(h("span", { class: "cg-exports" }, "Export",
        exportLink(character, "png", "PNG"), exportLink(character, "json", "JSON")));
    }
    const greeting = character.greeting || "";
    const alternates = (character.alternate_greetings || []).length;
    const badges = [];
    if (character.is_owner) {
      // Sharing needs a moderator's approval; a private character is usable at once.
      const [text, kind] = !character.is_public ? ["Private", ""]
        : character.approval === "approved" ? ["Public", ""]
          : character.approval === "rejected" ? ["Not approved for sharing", "rejected"]
            : ["Public after review", "pending"];
      badges.push(h("span", { class: `cg-badge${kind ? ` cg-badge-${kind}` : ""}`, "data-testid": "character-badge" }, text));
    }
    return h("li", { class: "cg-card", "data-testid": "character-card", "data-id": String(character.id) },
      h("div", { class: "cg-card-head" },
        avatarElement(character, "cg-avatar"),
        h("div", { class: "cg-card-names" },
          h("h3", { class: "cg-name", id: nameId, "data-testid": "character-name" }, character.name),
          badges.length ? h("div", { class: "cg-badges" }, badges) : null)),
      character.description
        ? h("p", { class: "cg-description", "data-testid": "character-description" }, character.description)
        : null,
      greeting
        ? h("blockquote", { class: "cg-greeting", "data-testid": "character-greeting" },
          h("span", { class: "visually-hidden" }, "Greeting: "), greeting)
        : null,
      alternates ? h("p", { class: "cg-alternates muted" },
        `+ ${alternates} alternate greeting${alternates === 1 ? "" : "s"}`) : null,
      h("div", { class: "cg-actions" }, actions));
  }

  function exportLink(character, format, label) {
    return h("a", {
      href: api.exportCardUrl(character.id, format),
      download: "",
      "data-testid": `character-export-${format}`,
      "aria-label": `Export “${character.name}” as a ${label} card`,
      title: `Download as a ${label} character card`,
    }, label);
  }

  function render() {
    const focused = document.activeElement;
    const card = focused && grid.contains(focused) ? focused.closest("[data-id]") : null;
    const focus = card ? { id: card.getAttribute("data-id"), testid: focused.getAttribute("data-testid") } : null;
    grid.textContent = "";
    for (const character of state.items.values()) grid.append(cardElement(character));
    empty.hidden = !state.loaded || state.items.size > 0;
    more.hidden = !state.next;
    if (focus) focusCard(focus.id, focus.testid);
  }

  function focusCard(id, testid = "character-chat") {
    const node = grid.querySelector(`[data-id="${CSS.escape(String(id))}"] [data-testid="${testid}"]`)
      || grid.querySelector(`[data-id="${CSS.escape(String(id))}"] [data-testid="character-chat"]`);
    if (node) node.focus();
    return !!node;
  }

  function put(character, { first = false } = {}) {
    if (first && !state.items.has(character.id)) {
      const rest = Array.from(state.items.entries());
      state.items = new Map([[character.id, character], ...rest]);
    } else {
      state.items.set(character.id, character);
    }
  }

  async function load({ append = false } = {}) {
    sectionEl.setAttribute("aria-busy", "true");
    try {
      const data = pageOf(await api.listCharacters({ cursor: append ? state.next : undefined }));
      if (!append) state.items.clear();
      for (const character of data.results) put(character);
      state.next = data.next;
      state.loaded = true;
      listStatus.textContent = "";
      render();
    } catch (err) {
      listStatus.textContent = `Couldn't load characters: ${errorText(err)}`;
    } finally {
      sectionEl.removeAttribute("aria-busy");
    }
  }

  function refresh() {
    state.loading = load();
    return state.loading;
  }

  more.addEventListener("click", () => load({ append: true }));

  // --- import --------------------------------------------------------------------------------

  async function importFile(file) {
    if (!file) return;
    importError.hidden = true;
    importError.textContent = "";
    importStatus.textContent = `Importing “${file.name}”…`;
    importButton.disabled = true;
    try {
      const character = await api.importCard(file);
      put(character, { first: true });
      state.loaded = true;
      render();
      importStatus.textContent = `Imported “${character.name}”.`;
      const card = grid.querySelector(`[data-id="${CSS.escape(String(character.id))}"]`);
      if (card) {
        card.classList.add("cg-card-new");
        card.scrollIntoView({ block: "nearest" });
        focusCard(character.id);
      }
    } catch (err) {
      importStatus.textContent = "";
      importError.textContent = "";
      importError.append(
        h("strong", null, `Couldn't import “${file.name}”.`), " ",
        h("span", { "data-testid": "character-import-error-message" }, errorText(err)));
      if (err && err.code) importError.setAttribute("data-code", err.code);
      importError.hidden = false;
    } finally {
      importButton.disabled = false;
      fileInput.value = "";
    }
  }

  importButton.addEventListener("click", () => fileInput.click());
  fileInput.addEventListener("change", () => importFile(fileInput.files && fileInput.files[0]));

  let dragDepth = 0;
  function hasFiles(event) {
    return event.dataTransfer && Array.from(event.dataTransfer.types || []).includes("Files");
  }
  sectionEl.addEventListener("dragenter", (event) => {
    if (!hasFiles(event)) return;
    event.preventDefault();
    dragDepth += 1;
    sectionEl.classList.add("cg-dragging");
  });
  sectionEl.addEventListener("dragover", (event) => {
    if (!hasFiles(event)) return;
    event.preventDefault();
    event.dataTransfer.dropEffect = "copy";
  });
  sectionEl.addEventListener("dragleave", () => {
    dragDepth = Math.max(0, dragDepth - 1);
    if (!dragDepth) sectionEl.classList.remove("cg-dragging");
  });
  sectionEl.addEventListener("drop", (event) => {
    if (!hasFiles(event)) return;
    event.preventDefault();
    dragDepth = 0;
    sectionEl.classList.remove("cg-dragging");
    importFile(event.dataTransfer.files[0]);
  });

  // --- open and close ------------------------------------------------------------------------

  let returnFocus = null;
  function open() {
    returnFocus = document.activeElement instanceof HTMLElement ? document.activeElement : null;
    sectionEl.hidden = false;
    heading.focus();
    refresh();
  }
  function close() {
    if (editor.isOpen()) editor.close();
    sectionEl.hidden = true;
    if (onClose) onClose();
    if (returnFocus && returnFocus.isConnected && !returnFocus.closest("[hidden]")) returnFocus.focus();
    returnFocus = null;
  }
  closeButton.addEventListener("click", close);
  sectionEl.addEventListener("keydown", (event) => {
    if (event.defaultPrevented || editor.isOpen()) return;
    if (event.key === "Escape") {
      event.preventDefault();
      close();
      return;
    }
    // Arrow keys move between the cards (and so never reach the chat behind the gallery).
    const card = event.target instanceof Element ? event.target.closest(".cg-card") : null;
    const step = { ArrowRight: 1, ArrowDown: columns(), ArrowLeft: -1, ArrowUp: -columns() }[event.key];
    if (!card || !step || event.target.matches("input, textarea, select")) return;
    event.preventDefault();
    const cards = Array.from(grid.querySelectorAll(".cg-card"));
    const next = cards[cards.indexOf(card) + step];
    if (next) focusCard(next.getAttribute("data-id"), event.target.getAttribute("data-testid"));
  });
  function columns() {
    const style = getComputedStyle(grid).gridTemplateColumns;
    return Math.max(1, style.split(" ").filter(Boolean).length);
  }

  const editor = createEditor({
    api,
    state,
    onSaved(character, created) {
      put(character, { first: created });
      state.loaded = true;
      render();
      listStatus.textContent = created ? `Created “${character.name}”.` : `Saved “${character.name}”.`;
    },
    onDeleted(id) {
      state.items.delete(id);
      render();
      listStatus.textContent = "Character deleted.";
      heading.focus();
    },
    afterClose(id) {
      if (id == null || !focusCard(id, "character-chat")) newButton.focus();
    },
  });
  newButton.addEventListener("click", () => editor.open(null, newButton));

  if (!sectionEl.hidden) refresh();
  return { open, refresh, close };
}

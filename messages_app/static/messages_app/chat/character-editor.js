/* The character editor: a <dialog> with the card's fields, the model settings the server
 * allows (learnt from its validation errors), errors shown by field, and an avatar upload
 * with a preview. Used by characters.js. */
import { avatarElement, errorText, h, nextId } from "./library-dom.js";

// --- the editor's fields ---------------------------------------------------------------------

const PROVIDERS = [
  ["", "Service default"],
  ["lmstudio", "LM Studio (OpenAI-compatible)"],
  ["openai_compatible", "OpenAI-compatible"],
  ["openai", "OpenAI"],
  ["anthropic", "Anthropic"],
];

// [field, label, kind, hint]
const TEXT_FIELDS = [
  ["description", "Description", "textarea", "Shown on the card; not sent to the model."],
  ["persona", "Persona", "textarea", "Who the character is, for the model."],
  ["personality", "Personality", "textarea", "Temperament, in a few words, for the model."],
  ["scenario", "Scenario", "textarea", "Where and when the conversation takes place."],
  ["greeting", "Greeting", "textarea", "The first message of every new conversation."],
];
const PROMPT_FIELDS = [
  ["example_dialogue", "Example dialogue", "textarea", "How the character talks, e.g. <START> {{user}}: … {{char}}: …"],
  ["system_prompt", "System prompt", "textarea", "Instructions for the model. Empty: the default."],
];


/**
 * The editor, appended to <body> once. `state` is the gallery's (it remembers what the server
 * allows). Returns { open(character | null, triggerElement), close(), isOpen() }.
 */
export function createEditor({ api, state, onSaved, onDeleted, afterClose }) {
  const titleId = nextId("cg-editor-title");
  const title = h("h2", { id: titleId, class: "cg-editor-title" }, "New character");
  const formError = h("div", { class: "cg-form-error", role: "alert", "data-testid": "character-form-error", hidden: "" });
  const form = h("form", { class: "cg-form", novalidate: "" });
  const dialog = h("dialog", {
    class: "cg-editor lib-dialog",
    "aria-labelledby": titleId,
    "data-testid": "character-editor",
  }, form);
  document.body.appendChild(dialog);

  const fields = {}; // name -> input element
  const errors = {}; // name -> error element

  function field(name, label, kind, hint, attrs = {}) {
    const id = nextId(`cg-${name}`);
    const errorId = `${id}-error`;
    const hintId = hint ? `${id}-hint` : null;
    const testid = `character-field-${name}`;
    let input;
    if (kind === "textarea") input = h("textarea", { id, name, rows: 3, "data-testid": testid, ...attrs });
    else if (kind === "select") {
      input = h("select", { id, name, "data-testid": testid },
        attrs.options.map(([value, text]) => h("option", { value }, text)));
    } else input = h("input", { id, name, type: kind, "data-testid": testid, ...attrs });
    input.setAttribute("aria-describedby", [hintId, errorId].filter(Boolean).join(" "));
    fields[name] = input;
    errors[name] = h("p", { id: errorId, class: "cg-field-error", "data-testid": `character-error-${name}`, hidden: "" });
    return h("div", { class: `cg-field cg-field-${name}` },
      h("label", { for: id }, label),
      hint ? h("p", { id: hintId, class: "cg-hint" }, hint) : null,
      input,
      errors[name]);
  }

  // The avatar: a file input with a preview.
  const avatarId = nextId("cg-avatar");
  const avatarInput = h("input", {
    type: "file",
    id: avatarId,
    name: "avatar",
    accept: "image/png,image/jpeg,image/webp,image/gif",
    "data-testid": "character-avatar-input",
    "aria-describedby": `${avatarId}-hint ${avatarId}-error`,
  });
  const avatarPreview = h("span", { class: "cg-avatar-preview", "data-testid": "character-avatar-preview" });
  errors.avatar = h("p", { id: `${avatarId}-error`, class: "cg-field-error", "data-testid": "character-error-avatar", hidden: "" });
  const avatarRemove = h("button", { type: "button", class: "link-button", "data-testid": "character-avatar-remove", hidden: "" }, "Remove avatar");
  const avatarField = h("div", { class: "cg-field cg-field-avatar" },
    avatarPreview,
    h("div", null,
      h("label", { for: avatarId }, "Avatar"),
      h("p", { id: `${avatarId}-hint`, class: "cg-hint" }, "PNG, JPEG, WebP or GIF; shown at most 512 × 512."),
      avatarInput,
      avatarRemove,
      errors.avatar));
  let avatarFile = null;
  let previewUrl = null;
  let removeAvatar = false; // the saved avatar goes on save
  avatarInput.addEventListener("change", () => {
    avatarFile = (avatarInput.files && avatarInput.files[0]) || null;
    removeAvatar = false;
    setError("avatar", null);
    if (previewUrl) URL.revokeObjectURL(previewUrl);
    previewUrl = avatarFile ? URL.createObjectURL(avatarFile) : null;
    showPreview(previewUrl ? { name: fields.name.value, avatar_url: previewUrl } : editing);
    avatarRemove.hidden = !previewUrl && !(editing && editing.avatar_url);
  });
  avatarRemove.addEventListener("click", () => {
    avatarFile = null;
    avatarInput.value = "";
    if (previewUrl) URL.revokeObjectURL(previewUrl);
    previewUrl = null;
    removeAvatar = !!(editing && editing.avatar_url);
    showPreview({ name: fields.name.value || "?" });
    avatarRemove.hidden = true;
    avatarInput.focus();
  });
  function showPreview(character) {
    avatarPreview.textContent = "";
    avatarPreview.append(avatarElement(character || { name: fields.name.value || "?" }, "cg-avatar-large"));
  }

  // Alternate greetings: a list of textareas, added and removed.
  const altList = h("ol", { class: "cg-alternates-list", "data-testid": "character-alternate-greetings" });
  const altAdd = h("button", { type: "button", "data-testid": "character-alternate-add" }, "Add alternate greeting");
  errors.alternate_greetings = h("p", { class: "cg-field-error", "data-testid": "character-error-alternate_greetings", hidden: "" });
  function addAlternate(text = "", focus = false) {
    const index = altList.children.length + 1;
    const id = nextId("cg-alt");
    const area = h("textarea", { id, rows: 2, class: "cg-alternate", "data-testid": "character-alternate" });
    area.value = text;
    const remove = h("button", { type: "button", class: "link-button", "data-testid": "character-alternate-remove" }, "Remove");
    const li = h("li", { class: "cg-alternate-item" },
      h("label", { for: id }, `Alternate greeting ${index}`), area, remove);
    remove.setAttribute("aria-label", `Remove alternate greeting ${index}`);
    remove.addEventListener("click", () => {
      const next = li.nextElementSibling || li.previousElementSibling;
      li.remove();
      renumberAlternates();
      const target = next ? next.querySelector("textarea") : altAdd;
      target.focus();
    });
    altList.append(li);
    if (focus) area.focus();
  }
  function renumberAlternates() {
    Array.from(altList.children).forEach((li, i) => {
      li.querySelector("label").textContent = `Alternate greeting ${i + 1}`;
      li.querySelector("button").setAttribute("aria-label", `Remove alternate greeting ${i + 1}`);
    });
  }
  altAdd.addEventListener("click", () => addAlternate("", true));

  // Model settings: the provider is one of the server's choices; the model a free name.
  const providerField = field("provider", "Provider", "select", null, { options: PROVIDERS });
  const providerSelect = fields.provider;
  const modelList = h("datalist", { id: nextId("cg-models") });

  const saveButton = h("button", { type: "submit", class: "primary", "data-testid": "character-save" }, "Save");
  const cancelButton = h("button", { type: "button", "data-testid": "character-cancel" }, "Cancel");
  const deleteButton = h("button", { type: "button", class: "danger cg-delete", "data-testid": "character-delete" }, "Delete character");
  const closeX = h("button", { type: "button", class: "cg-editor-x", "aria-label": "Close" }, "×");

  form.append(
    h("div", { class: "cg-editor-head" }, title, closeX),
    formError,
    h("div", { class: "cg-editor-body" },
      h("div", { class: "cg-row" },
        avatarField,
        field("name", "Name", "text", null, { required: "", maxlength: "100", autocomplete: "off" })),
      TEXT_FIELDS.map(([name, label, kind, hint]) => field(name, label, kind, hint)),
      h("fieldset", { class: "cg-fieldset" },
        h("legend", null, "Alternate greetings"),
        h("p", { class: "cg-hint" }, "A new conversation offers these as swipes of the first message."),
        altList, altAdd, errors.alternate_greetings),
      PROMPT_FIELDS.map(([name, label, kind, hint]) => field(name, label, kind, hint, { rows: 4 })),
      h("fieldset", { class: "cg-fieldset cg-model" },
        h("legend", null, "Model settings"),
        h("p", { class: "cg-hint", "data-testid": "character-allowed" }, "Empty fields use the service's defaults."),
        h("div", { class: "cg-grid-2" },
          providerField,
          field("model", "Model", "text", null, { list: modelList.id, maxlength: "200", autocomplete: "off" }),
          field("temperature", "Temperature", "number", "0 to 2", { min: "0", max: "2", step: "0.05", inputmode: "decimal" }),
          field("max_tokens", "Max tokens", "number", "Longest reply", { min: "1", step: "1", inputmode: "numeric" })),
        modelList),
      h("details", { class: "cg-details" },
        h("summary", null, "Card details"),
        field("creator_notes", "Creator notes", "textarea", "Notes for people who use the card; not sent to the model."),
        field("tags", "Tags", "text", "Separated by commas."),
        h("div", { class: "cg-grid-2" },
          field("creator", "Creator", "text", null, { maxlength: "200" }),
          field("character_version", "Version", "text", null, { maxlength: "100" }))),
      h("div", { class: "cg-field cg-check" },
        fields.is_public = h("input", { type: "checkbox", id: nextId("cg-public"), name: "is_public", "data-testid": "character-field-is_public" }),
        h("label", { for: fields.is_public.id }, "Public: other users can chat with it once a moderator approves it"),
        errors.is_public = h("p", { class: "cg-field-error", hidden: "" }))),
    h("div", { class: "lib-dialog-actions" }, deleteButton, h("span", { class: "spacer" }), cancelButton, saveButton),
  );

  let editing = null; // the character being edited, or null for a new one
  let trigger = null;
  let savedId = null; // a character saved by this opening of the dialog
  let confirmingDelete = false;

  function fieldLabel(name) {
    const input = fields[name];
    const label = input && input.id ? form.querySelector(`label[for="${CSS.escape(input.id)}"]`) : null;
    if (label) return label.textContent;
    if (name === "alternate_greetings") return "Alternate greetings";
    if (name === "avatar") return "Avatar";
    return name;
  }

  // The letter placeholder follows the name as it is typed.
  fields.name.addEventListener("input", () => {
    if (!previewUrl && (removeAvatar || !(editing && editing.avatar_url))) {
      showPreview({ name: fields.name.value || "?" });
    }
  });

  function setError(name, messages) {
    const node = errors[name];
    const input = fields[name] || (name === "avatar" ? avatarInput : null);
    const text = Array.isArray(messages) ? messages.join(" ") : messages ? String(messages) : "";
    if (!node) return false;
    node.textContent = text;
    node.hidden = !text;
    if (input) {
      if (text) input.setAttribute("aria-invalid", "true");
      else input.removeAttribute("aria-invalid");
    }
    return true;
  }

  function clearErrors() {
    for (const name of Object.keys(errors)) setError(name, null);
    formError.hidden = true;
    formError.textContent = "";
  }

  function showFormError(text) {
    formError.textContent = text;
    formError.hidden = false;
  }

  function providerLabel(value) {
    const known = PROVIDERS.find(([v]) => v === value);
    return known ? known[1] : value;
  }

  function applyAllowed() {
    const hint = dialog.querySelector('[data-testid="character-allowed"]');
    const parts = ["Empty fields use the service's defaults."];
    if (state.allowedProviders) {
      for (const option of providerSelect.options) {
        option.disabled = !state.allowedProviders.includes(option.value) && option.value !== (editing && editing.provider);
      }
      parts.push(`Allowed providers: ${state.allowedProviders.map(providerLabel).join(", ")}.`);
    }
    if (state.allowedModels) {
      modelList.textContent = "";
      for (const m of state.allowedModels) if (m) modelList.append(h("option", { value: m }));
      const names = state.allowedModels.map((m) => m || "the default");
      parts.push(`Allowed models: ${names.join(", ")}.`);
    }
    hint.textContent = parts.join(" ");
  }

  /* The server's choices (GET characters/options/), asked once per page: the providers and
   * models the caller may pick, and the bounds and defaults of temperature and max tokens. */
  let optionsAsked = false;
  async function loadOptions() {
    if (optionsAsked || !api.characterOptions) return;
    optionsAsked = true;
    let options;
    try {
      options = await api.characterOptions();
    } catch {
      optionsAsked = false; // the save's validation still says what is allowed
      return;
    }
    state.allowedProviders = options.providers.map((p) => String(p.value));
    if (Array.isArray(options.models)) state.allowedModels = options.models.map(String);
    const t = options.temperature;
    fields.temperature.min = String(t.min);
    fields.temperature.max = String(t.max);
    fields.temperature.placeholder = `Default ${t.default}`;
    fields.max_tokens.min = String(options.max_tokens.min);
    fields.max_tokens.max = String(options.max_tokens.max);
    fields.max_tokens.placeholder = `Up to ${options.max_tokens.max}`;
    fields.model.placeholder = `Default: ${options.default_model}`;
    if (dialog.open) applyAllowed();
  }

  function fill(character) {
    const c = character || {};
    for (const [name, input] of Object.entries(fields)) {
      if (name === "is_public") input.checked = !!c.is_public;
      else if (name === "tags") input.value = (c.tags || []).join(", ");
      else if (name === "temperature" || name === "max_tokens") input.value = c[name] == null ? "" : String(c[name]);
      else input.value = c[name] == null ? "" : String(c[name]);
    }
    altList.textContent = "";
    for (const text of c.alternate_greetings || []) addAlternate(text);
    avatarFile = null;
    removeAvatar = false;
    avatarInput.value = "";
    if (previewUrl) URL.revokeObjectURL(previewUrl);
    previewUrl = null;
    showPreview(character);
    avatarRemove.hidden = !(character && character.avatar_url && api.deleteAvatar);
  }

  function collect() {
    const data = {};
    for (const [name, input] of Object.entries(fields)) {
      if (name === "is_public") data[name] = input.checked;
      else if (name === "tags") data[name] = input.value.split(",").map((t) => t.trim()).filter(Boolean);
      else if (name === "temperature") data[name] = input.value === "" ? null : Number(input.value);
      else if (name === "max_tokens") data[name] = input.value === "" ? null : Math.trunc(Number(input.value));
      else if (name === "name") data[name] = input.value.trim();
      else data[name] = input.value;
    }
    data.alternate_greetings = Array.from(altList.querySelectorAll("textarea"))
      .map((area) => area.value)
      .filter((text) => text.trim());
    return data;
  }

  function open(character, from) {
    editing = character || null;
    trigger = from || null;
    savedId = null;
    confirmingDelete = false;
    clearErrors();
    title.textContent = editing ? `Edit “${editing.name}”` : "New character";
    deleteButton.hidden = !editing;
    deleteButton.textContent = "Delete character";
    saveButton.textContent = editing ? "Save" : "Create";
    saveButton.disabled = false;
    fill(editing);
    applyAllowed();
    loadOptions();
    dialog.showModal();
    fields.name.focus();
  }

  function close() {
    if (dialog.open) dialog.close();
  }

  dialog.addEventListener("close", () => {
    if (previewUrl) URL.revokeObjectURL(previewUrl);
    previewUrl = null;
    const id = savedId != null ? savedId : editing ? editing.id : null;
    editing = null;
    // After a save the cards were redrawn: the focus goes to the saved one's card.
    if (savedId == null && trigger && trigger.isConnected) trigger.focus();
    else afterClose(id);
    trigger = null;
    savedId = null;
  });
  // Escape closes the dialog (the browser's `cancel`); it must not also close the gallery.
  dialog.addEventListener("keydown", (event) => {
    if (event.key === "Escape") event.stopPropagation();
  });
  cancelButton.addEventListener("click", close);
  closeX.addEventListener("click", close);

  function learnAllowed(details) {
    if (Array.isArray(details.allowed_providers)) state.allowedProviders = details.allowed_providers.map(String);
    if (Array.isArray(details.allowed_models)) state.allowedModels = details.allowed_models.map(String);
    applyAllowed();
  }

  function showServerErrors(err) {
    const details = (err && err.details) || {};
    learnAllowed(details);
    let first = null;
    const unplaced = [];
    for (const [name, messages] of Object.entries(details)) {
      if (name === "allowed_providers" || name === "allowed_models") continue;
      if (name === "non_field_errors" || name === "detail") {
        unplaced.push([].concat(messages).join(" "));
        continue;
      }
      const text = Array.isArray(messages) || typeof messages !== "object"
        ? [].concat(messages).map(String).join(" ")
        : Object.values(messages).flat().map(String).join(" ");
      if (setError(name, text)) {
        if (!first) first = fields[name] || (name === "alternate_greetings" ? altAdd : null);
      } else {
        unplaced.push(`${name}: ${text}`);
      }
    }
    const named = Object.keys(details)
      .filter((name) => errors[name] && !errors[name].hidden)
      .map((name) => fieldLabel(name));
    const summary = named.length
      ? `Please correct: ${named.join(", ")}.`
      : err && err.code === "invalid" ? "Please correct the fields marked below." : errorText(err);
    showFormError([summary, ...unplaced].join(" "));
    if (first) {
      const details = first.closest("details");
      if (details) details.open = true;
      first.focus();
      (errors[first.name] || first).scrollIntoView({ block: "nearest" });
    } else {
      formError.setAttribute("tabindex", "-1");
      formError.focus();
    }
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    clearErrors();
    const data = collect();
    if (!data.name) {
      setError("name", "A character needs a name.");
      showFormError("Please correct the fields marked below.");
      fields.name.focus();
      return;
    }
    saveButton.disabled = true;
    const created = !editing;
    let character;
    try {
      character = created ? await api.createCharacter(data) : await api.updateCharacter(editing.id, data);
    } catch (err) {
      saveButton.disabled = false;
      showServerErrors(err);
      return;
    }
    editing = character;
    savedId = character.id;
    if (removeAvatar && !avatarFile) {
      try {
        await api.deleteAvatar(character.id);
        character = { ...character, avatar_url: null };
        editing = character;
      } catch (err) {
        onSaved(character, created);
        saveButton.disabled = false;
        setError("avatar", errorText(err));
        showFormError(`“${character.name}” was saved, but its avatar was not removed: ${errorText(err)}`);
        return;
      }
    }
    if (avatarFile) {
      try {
        character = (await api.uploadAvatar(character.id, avatarFile)) || character;
        editing = character;
      } catch (err) {
        // The character is saved; only its picture was refused: stay open on it.
        onSaved(character, created);
        saveButton.disabled = false;
        title.textContent = `Edit “${character.name}”`;
        saveButton.textContent = "Save";
        deleteButton.hidden = false;
        setError("avatar", errorText(err));
        showFormError(`“${character.name}” was saved, but its avatar was not: ${errorText(err)}`);
        avatarInput.focus();
        return;
      }
    }
    saveButton.disabled = false;
    onSaved(character, created);
    close();
  });

  deleteButton.addEventListener("click", async () => {
    if (!editing) return;
    if (!confirmingDelete) {
      confirmingDelete = true;
      deleteButton.textContent = `Really delete “${editing.name}”?`;
      return;
    }
    deleteButton.disabled = true;
    try {
      await api.deleteCharacter(editing.id);
    } catch (err) {
      deleteButton.disabled = false;
      showFormError(`Couldn't delete: ${errorText(err)}`);
      return;
    }
    deleteButton.disabled = false;
    const id = editing.id;
    trigger = null;
    editing = null;
    dialog.close();
    onDeleted(id);
  });

  return { open, close, isOpen: () => dialog.open };
}

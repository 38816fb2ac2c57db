/* The page's frame: light/dark theme (the system's unless chosen, and remembered), keyboard
 * shortcuts with their help overlay on `?`, and the sidebar drawer of small screens. */

const THEME_KEY = "chat-theme";
const THEMES = ["system", "light", "dark"];
const THEME_WORDS = { system: "Theme: system", light: "Theme: light", dark: "Theme: dark" };

export function storedTheme() {
  try {
    const value = localStorage.getItem(THEME_KEY);
    return THEMES.includes(value) ? value : "system";
  } catch (e) {
    return "system";
  }
}

export function applyTheme(theme) {
  if (theme === "light" || theme === "dark") document.documentElement.setAttribute("data-theme", theme);
  else document.documentElement.removeAttribute("data-theme");
}

/* The toggle goes system → light → dark → system; the choice is kept in localStorage. */
export function setupTheme(button) {
  let theme = storedTheme();
  const draw = () => {
    applyTheme(theme);
    button.textContent = THEME_WORDS[theme];
    button.setAttribute("data-theme", theme);
    button.setAttribute("aria-label", THEME_WORDS[theme] + " (change)");
  };
  button.addEventListener("click", () => {
    theme = THEMES[(THEMES.indexOf(theme) + 1) % THEMES.length];
    try {
      if (theme === "system") localStorage.removeItem(THEME_KEY);
      else localStorage.setItem(THEME_KEY, theme);
    } catch (e) {
      /* private mode: for this page only */
    }
    draw();
  });
  draw();
}

function typing(target) {
  if (!target || !target.closest) return false;
  return !!target.closest("input, textarea, select, [contenteditable=''], [contenteditable='true']");
}

/* Keys: `?` help, Esc stop (or close what is open), ←/→ alternatives of the last message,
 * `/` the message box. `stop()` returns true when it stopped something. */
export function setupShortcuts({ overlay, button, composer, stop, swipe }) {
  let opener = null;
  const open = () => {
    opener = document.activeElement;
    overlay.hidden = false;
    overlay.querySelector("button").focus();
  };
  const close = () => {
    overlay.hidden = true;
    if (opener && opener.focus) opener.focus();
  };
  button.addEventListener("click", open);
  overlay.addEventListener("click", (event) => {
    if (event.target === overlay || event.target.closest("[data-close]")) close();
  });
  document.addEventListener("keydown", (event) => {
    if (event.defaultPrevented || event.ctrlKey || event.metaKey || event.altKey) return;
    if (event.key === "Escape") {
      if (!overlay.hidden) {
        close();
      } else if (stop()) {
        event.preventDefault();
      }
      return;
    }
    if (!overlay.hidden) {
      if (event.key === "Tab") {
        event.preventDefault(); // one button in the dialog: focus stays on it
        overlay.querySelector("button").focus();
      }
      return;
    }
    if (typing(event.target)) return;
    if (event.key === "?") {
      event.preventDefault();
      open();
    } else if (event.key === "ArrowLeft" || event.key === "ArrowRight") {
      if (event.target && event.target.closest && event.target.closest("details, nav, [role=dialog]")) return;
      event.preventDefault();
      swipe(event.key === "ArrowLeft" ? -1 : 1);
    } else if (event.key === "/" && !composer.disabled) {
      event.preventDefault();
      composer.focus();
    }
  });
}

/* Small screens: the sidebar slides over the chat; the toggle opens and closes it. */
export function setupDrawer(toggle, sidebar) {
  const set = (open) => {
    sidebar.classList.toggle("open", open);
    toggle.setAttribute("aria-expanded", String(open));
  };
  toggle.addEventListener("click", () => set(!sidebar.classList.contains("open")));
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && sidebar.classList.contains("open")) {
      set(false);
      toggle.focus();
    }
  });
  return { close: () => set(false) };
}

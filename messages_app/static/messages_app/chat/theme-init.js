/* Before the first paint: the theme chosen on this browser, if any (chat/ui.js toggles it). */
(function () {
  try {
    var theme = localStorage.getItem("chat-theme");
    if (theme === "light" || theme === "dark") document.documentElement.setAttribute("data-theme", theme);
  } catch (e) {
    /* storage unavailable: the system's theme */
  }
})();

/* What the page tells a person outside the thread: the banner, toasts, and the words for
 * limits and bans. The wording functions are pure (unit-tested with `node --test tests/js/`). */

export const LIMIT_WORDS = {
  minute: "messages per minute",
  hour: "messages per hour",
  day: "messages per day",
  in_flight: "replies at once",
  tokens: "daily token allowance",
};

/* A wait in the unit a person reads: "12 s", "3 min", "2 h" (always rounded up). */
export function waitText(seconds) {
  seconds = Math.max(1, Math.ceil(seconds));
  if (seconds < 120) return seconds + " s";
  if (seconds < 7200) return Math.ceil(seconds / 60) + " min";
  return Math.ceil(seconds / 3600) + " h";
}

export function limitText(limit, secondsLeft) {
  const what = LIMIT_WORDS[limit];
  return (
    "Slow down: you can send again in " + waitText(secondsLeft) + ". " +
    (what ? "You have reached your limit of " + what + "." : "You have reached a sending limit.")
  );
}

/* `details` of a `banned` error: {until, permanent, reason}. */
export function banText(details, formatDate = (iso) => new Date(iso).toLocaleString()) {
  details = details || {};
  const when = details.permanent || !details.until ? "permanently" : "until " + formatDate(details.until);
  const why = details.reason ? " Reason: " + details.reason : "";
  return "Your account is suspended " + when + "." + why;
}

/* The banner under the chat header (role=alert) and the toasts in the corner. */
export class Notices {
  constructor({ banner, toasts }) {
    this.banner = banner;
    this.toasts = toasts;
    banner.querySelector(".banner-close").addEventListener("click", () => this.hide());
  }

  toast(message, kind) {
    const node = document.createElement("div");
    node.className = "toast" + (kind ? " " + kind : "");
    node.textContent = message;
    node.setAttribute("data-testid", "toast");
    this.toasts.appendChild(node);
    setTimeout(() => node.remove(), 6000);
  }

  show(message, kind) {
    this.banner.querySelector(".banner-text").textContent = message;
    this.banner.setAttribute("data-kind", kind || "");
    this.banner.hidden = false;
  }

  hide() {
    this.banner.hidden = true;
  }

  /* The kind of the banner shown ("rate-limited", "banned", "deleted", ""), or null. */
  get shown() {
    return this.banner.hidden ? null : this.banner.getAttribute("data-kind") || "";
  }
}

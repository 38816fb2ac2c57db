/* REST client of the chat page: a fetch wrapper on the session cookie (and Django's CSRF
 * cookie for writes), with one method per endpoint the page uses. Every error rejects with an
 * ApiError carrying the server's `{"error": {code, message, details}}`. */

export class ApiError extends Error {
  constructor(status, code, message, details) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.code = code;
    this.details = details || {};
  }
}

export function getCookie(name) {
  for (const part of (document.cookie || "").split(";")) {
    const item = part.trim();
    if (item.startsWith(name + "=")) return decodeURIComponent(item.slice(name.length + 1));
  }
  return null;
}

// Pagination links are absolute; keep only the path so a proxy's scheme or host cannot bite.
export function sameOriginPath(url) {
  if (!url) return null;
  const u = new URL(url, window.location.href);
  return u.pathname + u.search;
}

function query(params) {
  const q = new URLSearchParams();
  for (const [key, value] of Object.entries(params || {})) {
    if (value !== undefined && value !== null && value !== "") q.set(key, String(value));
  }
  const s = q.toString();
  return s ? "?" + s : "";
}

export class Api {
  constructor({ root = "/api/v1/" } = {}) {
    this.root = root.endsWith("/") ? root : root + "/";
  }

  url(path) {
    return path.charAt(0) === "/" ? path : this.root + path;
  }

  /* One request. `body` goes as JSON, `form` (a FormData) as multipart. Resolves with the
   * parsed JSON (null for an empty body). */
  async request(path, { method = "GET", body, form } = {}) {
    const headers = { Accept: "application/json" };
    const init = { method, headers, credentials: "same-origin" };
    if (form !== undefined) {
      init.body = form;
    } else if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    if (method !== "GET" && method !== "HEAD") {
      const token = getCookie("csrftoken");
      if (token) headers["X-CSRFToken"] = token;
    }
    let res;
    try {
      res = await fetch(this.url(path), init);
    } catch (e) {
      throw new ApiError(0, "network_error", "The server could not be reached.", {});
    }
    const text = await res.text();
    let data = null;
    if (text) {
      try {
        data = JSON.parse(text);
      } catch (e) {
        data = null;
      }
    }
    if (!res.ok) {
      const err = (data && data.error) || {};
      const details = Object.assign({}, err.details || {});
      const retry = res.headers.get("Retry-After");
      if (retry && details.retry_after === undefined) details.retry_after = Number(retry);
      throw new ApiError(
        res.status,
        err.code || "http_" + res.status,
        err.message || res.statusText || "Request failed",
        details,
      );
    }
    return data;
  }

  get(path) {
    return this.request(path);
  }

  // --- conversations ---
  listConversations({ q, cursor } = {}) {
    return this.get(cursor ? sameOriginPath(cursor) : "conversations/" + query({ q }));
  }
  getConversation(id) {
    return this.get(`conversations/${id}/`);
  }
  createConversation(characterId) {
    return this.request("conversations/", { method: "POST", body: { character_id: characterId } });
  }
  renameConversation(id, title) {
    return this.request(`conversations/${id}/`, { method: "PATCH", body: { title } });
  }
  deleteConversation(id) {
    return this.request(`conversations/${id}/`, { method: "DELETE" });
  }
  /* Show the branch through `messageId`: its newest leaf becomes the active leaf. */
  switchBranch(conversationId, messageId) {
    return this.request(`conversations/${conversationId}/`, {
      method: "PATCH",
      body: { active_leaf_id: messageId },
    });
  }
  exportChatUrl(conversationId, format = "markdown") {
    return this.url(`conversations/${conversationId}/export/` + query({ format }));
  }

  // --- characters ---
  listCharacters({ cursor } = {}) {
    return this.get(cursor ? sameOriginPath(cursor) : "characters/");
  }
  async listAllCharacters(maxPages = 20) {
    let all = [];
    let data = await this.listCharacters();
    for (let i = 0; ; i++) {
      all = all.concat((data && data.results) || []);
      if (!data || !data.next || i >= maxPages) return all;
      data = await this.listCharacters({ cursor: data.next });
    }
  }
  getCharacter(id) {
    return this.get(`characters/${id}/`);
  }
  /** What the caller may choose for a character's model settings (GET characters/options/). */
  characterOptions() {
    return this.get("characters/options/");
  }
  createCharacter(data) {
    return this.request("characters/", { method: "POST", body: data });
  }
  updateCharacter(id, data) {
    return this.request(`characters/${id}/`, { method: "PATCH", body: data });
  }
  deleteCharacter(id) {
    return this.request(`characters/${id}/`, { method: "DELETE" });
  }
  uploadAvatar(id, file) {
    const form = new FormData();
    form.append("file", file);
    return this.request(`characters/${id}/avatar/`, { method: "POST", form });
  }
  deleteAvatar(id) {
    return this.request(`characters/${id}/avatar/`, { method: "DELETE" });
  }
  importCard(file) {
    const form = new FormData();
    form.append("file", file);
    return this.request("characters/import/", { method: "POST", form });
  }
  exportCardUrl(id, format = "png") {
    return this.url(`characters/${id}/export/` + query({ format }));
  }

  // --- messages ---
  listMessages(conversationId, { limit = 50, cursor } = {}) {
    return this.get(
      cursor ? sameOriginPath(cursor) : `conversations/${conversationId}/messages/` + query({ limit }),
    );
  }
  sendMessage(conversationId, { content, client_id, parent_id } = {}) {
    return this.request(`conversations/${conversationId}/messages/`, {
      method: "POST",
      body: { content, client_id, parent_id },
    });
  }
  regenerate(messageId) {
    return this.request(`messages/${messageId}/regenerate/`, { method: "POST" });
  }
  editMessage(messageId, content) {
    return this.request(`messages/${messageId}/`, { method: "PATCH", body: { content } });
  }
  cancelGeneration(generationId) {
    return this.request(`generations/${generationId}/cancel/`, { method: "POST" });
  }
  feedback(messageId, rating) {
    return this.request(`messages/${messageId}/feedback/`, { method: "POST", body: { rating } });
  }
  report(messageId, reason) {
    return this.request(`messages/${messageId}/report/`, { method: "POST", body: { reason } });
  }
}

/* The chat page's search box: GET /api/v1/search/messages/ and a list of hits.
 *
 * Each hit's snippet is inserted as HTML only because the server escaped it and added nothing
 * but <mark> around the hits (messages_app.search.snippet_html); everything else goes in with
 * textContent. A hit links to #conversation-<id>, which chat.js opens (hashchange).
 */
(function () {
  "use strict";

  var form = document.getElementById("search-form");
  if (!form) return;
  var input = document.getElementById("search-input");
  var list = document.getElementById("search-results");
  var status = document.getElementById("search-status");
  var more = document.getElementById("search-more");
  var API = "/api/v1/search/messages/";
  var token = 0;
  var nextUrl = null;

  function setStatus(text) {
    status.textContent = text;
    status.hidden = !text;
  }

  function hitElement(hit) {
    var li = document.createElement("li");
    var link = document.createElement("a");
    link.href = "#conversation-" + hit.conversation.id;
    link.className = "search-hit";
    link.setAttribute("data-testid", "search-hit");
    link.setAttribute("data-message-id", String(hit.message.id));
    var where = document.createElement("span");
    where.className = "search-hit-where small muted";
    where.textContent = (hit.conversation.title || hit.conversation.character_name) +
      " · " + (hit.message.role === "user" ? "you" : hit.conversation.character_name);
    var snippet = document.createElement("span");
    snippet.className = "search-hit-snippet";
    snippet.setAttribute("data-testid", "search-snippet");
    snippet.innerHTML = hit.snippet; // escaped by the server; only <mark> is markup
    link.appendChild(where);
    link.appendChild(snippet);
    li.appendChild(link);
    return li;
  }

  function load(url, append) {
    var mine = ++token;
    setStatus(append ? "" : "Searching…");
    more.hidden = true;
    return fetch(url, { headers: { Accept: "application/json" }, credentials: "same-origin" })
      .then(function (res) {
        return res.json().then(function (data) { return { ok: res.ok, data: data }; });
      })
      .then(function (answer) {
        if (mine !== token) return;
        if (!answer.ok) {
          var err = (answer.data && answer.data.error) || {};
          setStatus(err.message || "Search failed.");
          return;
        }
        if (!append) list.textContent = "";
        answer.data.results.forEach(function (hit) { list.appendChild(hitElement(hit)); });
        var count = answer.data.count;
        setStatus(count === 0 ? "No messages found." : count + (count === 1 ? " message" : " messages"));
        nextUrl = answer.data.next;
        more.hidden = !nextUrl;
      })
      .catch(function () {
        if (mine === token) setStatus("Search failed.");
      });
  }

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    var q = input.value.trim();
    if (!q) {
      token++;
      list.textContent = "";
      more.hidden = true;
      setStatus("");
      return;
    }
    load(API + "?" + new URLSearchParams({ q: q }).toString(), false);
  });
  more.addEventListener("click", function () {
    if (nextUrl) load(nextUrl, true);
  });
})();

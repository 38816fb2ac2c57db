/* The sidebar's conversation list (a minimal version: the lib helper's module replaces it,
 * keeping mountConversationList's signature and the data-testid hooks). */

function make(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = text;
  return node;
}

export function conversationLabel(conv) {
  if (conv.title) return conv.title;
  if (conv.character && conv.character.name) return conv.character.name;
  return "Conversation #" + conv.id;
}

/* Mount the list in `navEl`. Returns {refresh(), setActive(id), upsert(conversation)}. */
export function mountConversationList(navEl, { api, onOpen, getActiveId }) {
  const list = make("ul", "conversation-list");
  list.setAttribute("data-testid", "conversation-list");
  const more = make("button", "link-button", "Load more");
  more.type = "button";
  more.hidden = true;
  navEl.append(list, more);
  let conversations = [];
  let next = null;

  function draw() {
    list.textContent = "";
    if (!conversations.length) {
      const empty = make("li", "muted small", "No conversations yet.");
      empty.setAttribute("data-testid", "conversation-empty");
      list.appendChild(empty);
    }
    const active = getActiveId();
    for (const conv of conversations) {
      const li = make("li", conv.id === active ? "active" : "");
      li.setAttribute("data-testid", "conversation-item");
      li.setAttribute("data-id", String(conv.id));
      const b = make("button");
      b.type = "button";
      b.appendChild(make("span", "conv-title", conversationLabel(conv)));
      if (conv.id === active) b.setAttribute("aria-current", "true");
      b.addEventListener("click", () => onOpen(conv.id));
      li.appendChild(b);
      list.appendChild(li);
    }
    more.hidden = !next;
  }

  async function load(cursor) {
    const data = await api.listConversations({ cursor });
    const page = (data && data.results) || [];
    conversations = cursor ? conversations.concat(page) : page;
    next = (data && data.next) || null;
    draw();
  }

  more.addEventListener("click", () => next && load(next));

  return {
    refresh: () => load(null),
    setActive: () => draw(),
    upsert(conv) {
      if (!conv || conv.id == null) return;
      const index = conversations.findIndex((c) => c.id === conv.id);
      const merged = Object.assign({}, index >= 0 ? conversations[index] : {}, conv);
      if (index >= 0) conversations.splice(index, 1);
      conversations.unshift(merged);
      draw();
    },
  };
}

/* The controls over messages: regenerate, edit and resend, the alternatives (‹ › and the arrow
 * keys), stop, copy, feedback and report. `page` gives what they act on (see app.js). */

export function createControls(page) {
  const { api, store, socket, state, el } = page;
  const { flush, canAct, updateComposer, loadMessages, scrollToBottom, toast, rateLimited, banned } =
    page;

  // A REST call that starts a reply was refused: say why in words.
  function refused(err, what) {
    if (err.code === "rate_limited") rateLimited(err.details.limit, err.details.retry_after);
    else if (err.code === "banned") banned(err.details);
    else if (err.code === "content_blocked") toast("Blocked by the content filter: " + what + " was not sent.", "error");
    else toast("Could not " + what + ": " + err.message, "error");
  }

  async function regenerate(entry) {
    if (entry.msg.id == null || !canAct()) return;
    try {
      const answer = await api.regenerate(entry.msg.id);
      if (answer && answer.assistant_message) store.upsert(answer.assistant_message);
    } catch (err) {
      refused(err, "write another reply");
    }
    flush();
    scrollToBottom();
  }

  async function editAndResend(entry, text) {
    if (entry.msg.id == null || !canAct()) return;
    try {
      const answer = await api.editMessage(entry.msg.id, text);
      for (const msg of [answer.user_message, answer.assistant_message]) if (msg) store.upsert(msg);
      page.thread.closeEditor(entry);
    } catch (err) {
      refused(err, "send the edit");
      if (err.details && err.details.message_id != null) loadMessages(state.openToken, true);
    }
    flush();
    scrollToBottom();
  }

  /* ‹ › on a message with siblings: show the branch through the sibling `delta` away, redrawn in
   * place (the switched message stays where it was on the screen). */
  async function switchBranch(entry, delta) {
    const sib = entry.msg.siblings;
    if (!sib || !state.current || store.busy()) return;
    const target = sib.ids[sib.position - 1 + delta];
    if (target == null) return;
    const token = state.openToken;
    const node = el.items.querySelector('[data-id="' + entry.msg.id + '"]');
    const top = node ? node.getBoundingClientRect().top : null;
    try {
      const conv = await api.switchBranch(state.current.id, target);
      if (token !== state.openToken) return;
      if (conv) state.current = Object.assign({}, state.current, conv);
      await loadMessages(token, true, { keepScroll: true });
    } catch (err) {
      toast("Could not switch to that alternative: " + err.message, "error");
      return;
    }
    const moved = el.items.querySelector('[data-id="' + target + '"]');
    if (moved && top !== null) el.messages.scrollTop += moved.getBoundingClientRect().top - top;
    if (moved) {
      const again = moved.querySelector(delta < 0 ? '[data-testid="branch-prev"]' : '[data-testid="branch-next"]');
      if (again && document.activeElement && document.activeElement.closest(".branch")) again.focus();
    }
  }

  /* The arrow keys, as in SillyTavern: swipe the last message between its alternatives; right
   * on the last reply's last alternative writes a new one. */
  function swipe(delta) {
    const last = store.thread[store.thread.length - 1];
    if (!last || store.busy() || !el.gallery.hidden) return; // not the chat behind the gallery
    const sib = last.msg.siblings;
    const position = sib ? sib.position : 1;
    const total = sib ? sib.total : 1;
    if (delta < 0 && position > 1) switchBranch(last, -1);
    else if (delta > 0 && position < total) switchBranch(last, 1);
    else if (delta > 0 && last.msg.role === "assistant" && last.msg.parent_id != null) regenerate(last);
  }

  function stopReply() {
    const entry = store.activeReply();
    if (!entry || state.stopping) return;
    const gen = entry.msg.generation_id;
    if (gen == null) return;
    state.stopping = true;
    updateComposer();
    if (!socket.send({ type: "generation.cancel", generation_id: gen })) {
      api.cancelGeneration(gen).then(
        (answer) => {
          if (answer && answer.message) store.ended({ generation_id: gen, message: answer.message }, "cancelled");
          state.stopping = false;
          flush();
        },
        (err) => {
          state.stopping = false;
          if (err.code !== "already_finished") toast("Could not stop the reply: " + err.message, "error");
          flush();
        },
      );
    }
  }

  async function copyText(text) {
    try {
      await navigator.clipboard.writeText(text);
    } catch (e) {
      // No clipboard API (an insecure origin): the old way.
      const area = document.createElement("textarea");
      area.value = text;
      area.setAttribute("readonly", "");
      area.style.position = "fixed";
      area.style.opacity = "0";
      document.body.appendChild(area);
      area.select();
      document.execCommand("copy");
      area.remove();
    }
    toast("Copied");
  }

  async function sendFeedback(entry, rating) {
    if (entry.msg.id == null) return;
    try {
      await api.feedback(entry.msg.id, rating);
      entry.rating = rating;
      store.touch(entry);
      flush();
    } catch (err) {
      toast("Could not save feedback: " + err.message, "error");
    }
  }

  async function reportMessage(entry) {
    if (entry.msg.id == null) return;
    const reason = window.prompt("Why are you reporting this reply?");
    if (reason == null || !reason.trim()) return;
    try {
      await api.report(entry.msg.id, reason.trim());
      entry.reported = true;
      toast("Thank you: the moderators will review this reply.");
    } catch (err) {
      if (err.code === "already_reported") {
        entry.reported = true;
        toast("You have already reported this reply.");
      } else {
        toast("Could not send the report: " + err.message, "error");
      }
    }
    store.touch(entry);
    flush();
  }

  return {
    regenerate,
    editAndResend,
    switchBranch,
    swipe,
    stopReply,
    copyText,
    sendFeedback,
    reportMessage,
  };
}

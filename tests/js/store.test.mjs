// The chat page's state rules (messages_app/static/messages_app/chat/store.js).
import { test } from "node:test";
import assert from "node:assert/strict";
import { loadModule } from "./load.mjs";

const { ChatStore, mergeMessage } = await loadModule("store.js");

const CONV = 7;
let nextId = 100;

function msg(fields) {
  return Object.assign(
    { id: nextId++, conversation_id: CONV, role: "assistant", content: "", status: "completed" },
    fields,
  );
}

function ids(store) {
  return store.thread.map((e) => e.msg.id);
}

// A greeting, a user turn and a streaming reply, as the REST page gives them.
function started() {
  const store = new ChatStore(CONV);
  const greeting = msg({ id: 1, parent_id: null, content: "Ahoy!" });
  const user = msg({ id: 2, parent_id: 1, role: "user", content: "Hi", client_id: "c1" });
  const reply = msg({ id: 3, parent_id: 2, status: "streaming", content: "Hel", generation_id: "g1", seq: 2 });
  store.setThread([greeting, user, reply]);
  return store;
}

test("a loaded page becomes the thread, oldest first", () => {
  const store = started();
  assert.deepEqual(ids(store), [1, 2, 3]);
  assert.equal(store.activeReply().msg.id, 3);
  assert.ok(store.busy());
});

test("deltas join in seq order after the snapshot's seq", () => {
  const store = started();
  assert.equal(store.applyDelta({ generation_id: "g1", seq: 3, text: "lo" }).text, "lo");
  assert.equal(store.get(3).msg.content, "Hello");
});

test("a delta seen twice, or already in the snapshot, is dropped", () => {
  const store = started();
  store.applyDelta({ generation_id: "g1", seq: 2, text: "l" }); // in the snapshot (seq 2)
  store.applyDelta({ generation_id: "g1", seq: 3, text: "lo" });
  store.applyDelta({ generation_id: "g1", seq: 3, text: "lo" });
  assert.equal(store.get(3).msg.content, "Hello");
});

test("a delta ahead of a gap waits for the gap and asks to resume from the last seq", () => {
  const store = started();
  const ahead = store.applyDelta({ generation_id: "g1", seq: 4, text: " world" });
  assert.equal(ahead.entry, null);
  assert.equal(ahead.gapAfter, 2);
  assert.equal(store.get(3).msg.content, "Hel");
  const filled = store.applyDelta({ generation_id: "g1", seq: 3, text: "lo" });
  assert.equal(filled.text, "lo world");
  assert.equal(store.get(3).msg.content, "Hello world");
  assert.equal(store.lastSeq.get("g1"), 4);
});

test("deltas that come before their message is known are applied once it is", () => {
  const store = started();
  store.applyDelta({ generation_id: "g2", seq: 2, text: " there" });
  store.applyDelta({ generation_id: "g2", seq: 1, text: "Hi" });
  store.upsert(msg({ id: 5, parent_id: 2, status: "queued", generation_id: null, content: "" }));
  store.started({ generation_id: "g2", message_id: 5 });
  assert.equal(store.get(5).msg.content, "Hi there");
  assert.equal(store.get(5).msg.status, "streaming");
});

test("the final message wins over the text streamed, and later deltas change nothing", () => {
  const store = started();
  store.applyDelta({ generation_id: "g1", seq: 3, text: "lo" });
  store.ended({ generation_id: "g1", message: msg({ id: 3, parent_id: 2, content: "Hello!", status: "completed", seq: 4 }) }, "completed");
  store.applyDelta({ generation_id: "g1", seq: 5, text: "junk" });
  assert.equal(store.get(3).msg.content, "Hello!");
  assert.equal(store.get(3).msg.status, "completed");
  assert.equal(store.busy(), false);
});

test("a stale snapshot does not undo progress", () => {
  const local = { id: 3, status: "streaming", content: "Hello wor" };
  assert.equal(mergeMessage(local, { id: 3, status: "queued", content: "" }).content, "Hello wor");
  assert.equal(mergeMessage(local, { id: 3, status: "streaming", content: "Hel" }).content, "Hello wor");
  assert.equal(mergeMessage(local, { id: 3, status: "completed", content: "Hello world" }).content, "Hello world");
});

test("resume asks for what the page has not shown: after the last seq applied", () => {
  const store = started();
  store.applyDelta({ generation_id: "g1", seq: 3, text: "lo" });
  assert.deepEqual(store.resumeFrames(), [{ type: "stream.resume", generation_id: "g1", after_seq: 3 }]);
  store.ended({ generation_id: "g1" }, "cancelled");
  assert.deepEqual(store.resumeFrames(), []);
});

test("a reload mid-stream resumes after the snapshot's seq, and the replay does not double text", () => {
  const store = started(); // reloaded: the page shows "Hel", deltas 1..2
  const [frame] = store.resumeFrames();
  assert.equal(frame.after_seq, 2);
  // The server replays from 3 on; a live delta already applied is dropped.
  for (const [seq, text] of [[3, "lo"], [4, " sailor"], [4, " sailor"]]) {
    store.applyDelta({ generation_id: "g1", seq, text });
  }
  assert.equal(store.get(3).msg.content, "Hello sailor");
});

test("a resync snapshot ahead of the page takes over and deltas it covers are dropped", () => {
  const store = started();
  store.setThread([
    msg({ id: 1, parent_id: null, content: "Ahoy!" }),
    msg({ id: 2, parent_id: 1, role: "user", content: "Hi" }),
    msg({ id: 3, parent_id: 2, status: "streaming", content: "Hello wor", generation_id: "g1", seq: 5 }),
  ]);
  store.applyDelta({ generation_id: "g1", seq: 4, text: "XX" });
  store.applyDelta({ generation_id: "g1", seq: 6, text: "ld" });
  assert.equal(store.get(3).msg.content, "Hello world");
});

test("a local send is confirmed in place by its client_id", () => {
  const store = started();
  store.ended({ generation_id: "g1" }, "completed");
  const pending = store.addPending({ content: "Again", client_id: "c2", conversation_id: CONV });
  assert.equal(store.busy(), true);
  store.upsert(msg({ id: 4, parent_id: 3, role: "user", content: "Again", client_id: "c2", status: "completed" }));
  assert.equal(store.get(4), pending);
  assert.deepEqual(ids(store), [1, 2, 3, 4]);
  store.upsert(msg({ id: 5, parent_id: 4, status: "queued" }));
  assert.deepEqual(ids(store), [1, 2, 3, 4, 5]);
});

test("a failed send keeps its text and can go again with the same client_id", () => {
  const store = started();
  const pending = store.addPending({ content: "Again", client_id: "c2", conversation_id: CONV });
  store.failPending("Not sent", { code: "rate_limited" });
  assert.equal(pending.msg.status, "failed");
  assert.equal(pending.errorCode, "rate_limited");
  assert.equal(store.busy(), true); // the reply g1 still streams
  store.resend(pending);
  assert.equal(pending.msg.status, "sending");
});

test("a regenerated reply replaces the old one on the thread, and both say 2 of 2", () => {
  const store = started();
  store.ended({ generation_id: "g1", message: msg({ id: 3, parent_id: 2, content: "Hello", siblings: { ids: [3], position: 1, total: 1 } }) }, "completed");
  store.upsert(msg({ id: 9, parent_id: 2, status: "queued", generation_id: "g9", siblings: { ids: [3, 9], position: 2, total: 2 } }));
  assert.deepEqual(ids(store), [1, 2, 9]);
  assert.deepEqual(store.get(3).msg.siblings, { ids: [3, 9], position: 1, total: 2 });
  assert.equal(store.lastReply().msg.id, 9);
});

test("an edit makes a new branch from the edited turn", () => {
  const store = started();
  store.ended({ generation_id: "g1" }, "completed");
  store.upsert(msg({ id: 10, parent_id: 1, role: "user", content: "Hello instead", siblings: { ids: [2, 10], position: 2, total: 2 } }));
  store.upsert(msg({ id: 11, parent_id: 10, status: "queued", generation_id: "g11" }));
  assert.deepEqual(ids(store), [1, 10, 11]);
  assert.equal(store.get(2).msg.siblings.total, 2);
});

test("switching branch: the loaded branch replaces the thread, the shared start stays", () => {
  const store = started();
  store.prependOlder([msg({ id: 0, parent_id: null, role: "system", content: "Old" })]);
  // (0 is shown before 1 although 1 is a root here: an older page is trusted as given.)
  assert.deepEqual(ids(store), [0, 1, 2, 3]);
  store.setThread([
    msg({ id: 10, parent_id: 1, role: "user", content: "Hello instead" }),
    msg({ id: 11, parent_id: 10, content: "Other answer" }),
  ]);
  assert.deepEqual(ids(store), [0, 1, 10, 11]);
  assert.ok(store.threadVersion > 0);
});

test("a message not sent stays with its branch: off the thread while another is shown", () => {
  const store = started();
  store.ended({ generation_id: "g1" }, "completed");
  const pending = store.addPending({ content: "Again", client_id: "c2", conversation_id: CONV });
  store.failPending("Not sent", { code: "rate_limited" });
  assert.equal(pending.msg.parent_id, 3);
  const other = [
    msg({ id: 10, parent_id: 1, role: "user", content: "Hello instead" }),
    msg({ id: 11, parent_id: 10, content: "Other answer" }),
  ];
  store.setThread(other);
  assert.deepEqual(ids(store), [1, 10, 11]); // not at the end of the other branch
  store.setThread([msg({ id: 2, parent_id: 1, role: "user", content: "Hi" }), msg({ id: 3, parent_id: 2, content: "Hello" })]);
  assert.deepEqual(ids(store), [1, 2, 3, null]);
  assert.equal(store.thread[3], pending);
  assert.equal(pending.msg.status, "failed");
});

test("switching to another greeting: a root sibling starts a thread of its own", () => {
  const store = started();
  store.setThread([msg({ id: 20, parent_id: null, content: "Another greeting", siblings: { ids: [1, 20], position: 2, total: 2 } })]);
  assert.deepEqual(ids(store), [20]);
  assert.equal(store.get(1).msg.siblings.position, 1);
});

test("a message whose parent is unknown asks for a reload", () => {
  const store = started();
  const result = store.upsert(msg({ id: 30, parent_id: 29 }));
  assert.equal(result.needsReload, true);
});

test("another conversation's messages are ignored", () => {
  const store = started();
  assert.equal(store.upsert(msg({ id: 31, conversation_id: 8, parent_id: 3 })), null);
  assert.deepEqual(ids(store), [1, 2, 3]);
});

test("a reply the content filter blocked loses its text; a blocked user message keeps it", () => {
  const store = started();
  store.failed({ generation_id: "g1", error: { code: "content_blocked" }, message: msg({ id: 3, parent_id: 2, status: "blocked", content: "" }) });
  assert.equal(store.get(3).msg.content, "");
  assert.equal(store.get(3).errorCode, "content_blocked");
  const pending = store.addPending({ content: "rude", client_id: "c3", conversation_id: CONV });
  store.blockPending({ categories: ["harassment"] });
  store.upsert(msg({ id: 40, parent_id: 3, role: "user", content: "rude", client_id: "c3", status: "completed" }));
  assert.equal(pending.msg.status, "blocked");
  assert.equal(pending.msg.content, "rude");
});

test("a failed reply keeps its text and says why", () => {
  const store = started();
  const entry = store.failed({ generation_id: "g1", message_id: 3, error: { code: "llm_timeout", message: "Timed out" } });
  assert.equal(entry.msg.status, "failed");
  assert.equal(entry.errorCode, "llm_timeout");
  assert.equal(entry.msg.content, "Hel");
});

test("takeDirty lists each changed entry once", () => {
  const store = started();
  store.takeDirty();
  store.flagged({ message_id: 3, categories: ["violence"] });
  store.flagged({ message_id: 3, categories: ["violence"] });
  assert.equal(store.takeDirty().length, 1);
  assert.equal(store.takeDirty().length, 0);
});

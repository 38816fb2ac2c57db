// The page's words for limits and bans (messages_app/static/messages_app/chat/notices.js).
import { test } from "node:test";
import assert from "node:assert/strict";
import { loadModule } from "./load.mjs";

const { waitText, limitText, banText } = await loadModule("notices.js");

test("a wait is said in seconds, then minutes, then hours, rounded up", () => {
  assert.equal(waitText(11.2), "12 s");
  assert.equal(waitText(0.1), "1 s");
  assert.equal(waitText(119), "119 s");
  assert.equal(waitText(121), "3 min");
  assert.equal(waitText(7300), "3 h");
});

test("a rate limit says slow down, when, and which limit", () => {
  assert.equal(
    limitText("minute", 12),
    "Slow down: you can send again in 12 s. You have reached your limit of messages per minute.",
  );
  assert.match(limitText("in_flight", 1.5), /in 2 s\. .*replies at once\.$/);
  assert.equal(
    limitText("something_new", 3),
    "Slow down: you can send again in 3 s. You have reached a sending limit.",
  );
});

test("a ban says until when and why", () => {
  const at = (iso) => "DATE(" + iso + ")";
  assert.equal(
    banText({ until: "2026-12-01T10:00:00Z", reason: "spam" }, at),
    "Your account is suspended until DATE(2026-12-01T10:00:00Z). Reason: spam",
  );
  assert.equal(banText({ permanent: true }, at), "Your account is suspended permanently.");
  assert.equal(banText(null, at), "Your account is suspended permanently.");
});

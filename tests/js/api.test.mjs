// The REST client's contract (messages_app/static/messages_app/chat/api.js): JSON in and out,
// the CSRF header on writes, and errors as ApiError {status, code, message, details}.
import { test } from "node:test";
import assert from "node:assert/strict";
import { loadModule } from "./load.mjs";

globalThis.document = { cookie: "sessionid=abc; csrftoken=tok%3D1" };
globalThis.window = { location: { href: "http://chat.test/" } };
const { Api, ApiError } = await loadModule("api.js");

function answer(status, body, headers = {}) {
  const calls = [];
  globalThis.fetch = async (url, init) => {
    calls.push({ url, init });
    return {
      ok: status >= 200 && status < 300,
      status,
      statusText: "Status " + status,
      headers: { get: (name) => headers[name] ?? null },
      text: async () => (body === undefined ? "" : JSON.stringify(body)),
    };
  };
  return calls;
}

test("a write sends JSON with the CSRF token of the cookie", async () => {
  const calls = answer(200, { id: 3, title: "Renamed" });
  const conv = await new Api().renameConversation(3, "Renamed");
  assert.deepEqual(conv, { id: 3, title: "Renamed" });
  assert.equal(calls[0].url, "/api/v1/conversations/3/");
  assert.equal(calls[0].init.method, "PATCH");
  assert.equal(calls[0].init.headers["X-CSRFToken"], "tok=1");
  assert.equal(calls[0].init.headers["Content-Type"], "application/json");
  assert.equal(calls[0].init.body, JSON.stringify({ title: "Renamed" }));
});

test("a read sends no CSRF token, and a 204 resolves with null", async () => {
  const calls = answer(204);
  assert.equal(await new Api().deleteConversation(5), null);
  assert.equal(calls[0].init.method, "DELETE");
  answer(200, { results: [] });
  const reads = answer(200, { results: [] });
  await new Api().listConversations({ q: "sea" });
  assert.equal(reads[0].url, "/api/v1/conversations/?q=sea");
  assert.equal(reads[0].init.headers["X-CSRFToken"], undefined);
});

test("an error is an ApiError with the server's code, message and details", async () => {
  answer(429, { error: { code: "rate_limited", message: "Too many", details: { limit: "minute" } } }, { "Retry-After": "12" });
  await assert.rejects(new Api().regenerate(9), (err) => {
    assert.ok(err instanceof ApiError && err instanceof Error);
    assert.equal(err.status, 429);
    assert.equal(err.code, "rate_limited");
    assert.equal(err.message, "Too many");
    assert.deepEqual(err.details, { limit: "minute", retry_after: 12 });
    return true;
  });
});

test("an error without the error shape still has a code and a message", async () => {
  answer(502, undefined);
  await assert.rejects(new Api().getCharacter(1), { status: 502, code: "http_502", message: "Status 502" });
  globalThis.fetch = async () => {
    throw new TypeError("Failed to fetch");
  };
  await assert.rejects(new Api().getCharacter(1), { status: 0, code: "network_error" });
});

test("pages follow the next link on the same origin, and uploads go as multipart", async () => {
  const calls = answer(200, { results: [] });
  await new Api().listConversations({ cursor: "https://proxy.example/api/v1/conversations/?cursor=xyz" });
  assert.equal(calls[0].url, "/api/v1/conversations/?cursor=xyz");
  globalThis.FormData = class {
    constructor() {
      this.parts = [];
    }
    append(name, value) {
      this.parts.push([name, value]);
    }
  };
  const uploads = answer(201, { id: 4 });
  await new Api().importCard("FILE");
  assert.equal(uploads[0].url, "/api/v1/characters/import/");
  assert.deepEqual(uploads[0].init.body.parts, [["file", "FILE"]]);
  assert.equal(uploads[0].init.headers["Content-Type"], undefined); // the browser sets the boundary
  assert.equal(new Api().exportChatUrl(7, "jsonl"), "/api/v1/conversations/7/export/?format=jsonl");
  assert.equal(new Api().exportCardUrl(2, "json"), "/api/v1/characters/2/export/?format=json");
});

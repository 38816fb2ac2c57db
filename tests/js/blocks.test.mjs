// Where streaming Markdown may be cut into blocks (messages_app/static/messages_app/chat/blocks.js).
import { test } from "node:test";
import assert from "node:assert/strict";
import { loadModule } from "./load.mjs";

const { BlockScanner } = await loadModule("blocks.js");

function scanAll(text) {
  return new BlockScanner().scan(text);
}

// Feed `text` in pieces; the boundaries seen along the way.
function scanInPieces(text, sizes) {
  const scanner = new BlockScanner();
  const seen = [];
  let at = 0;
  let i = 0;
  while (at < text.length) {
    at = Math.min(text.length, at + sizes[i++ % sizes.length]);
    seen.push(scanner.scan(text.slice(0, at)));
  }
  return { scanner, seen };
}

const PARTS = [
  "Intro paragraph\nstill intro.\n\n",
  "- a list\n- of two\n\n",
  "```js\nconst a = 1;\n\nconst b = 2; // a blank line inside the fence\n```\n",
  "After the code.\n\n",
  "~~~~\n``` not a close of a tilde fence\n\n~~~\n~~~~\n",
  "Last paragraph, not ended",
];
const SAMPLE = PARTS.join("");
// The only places SAMPLE may be cut: between its parts.
const ALLOWED = new Set(PARTS.map((_, i) => PARTS.slice(0, i).join("").length));

test("a blank line ends a block", () => {
  assert.equal(scanAll("one\n\ntwo"), "one\n\n".length);
});

test("nothing is cut inside a fence, even at a blank line", () => {
  const text = "```\ncode\n\nmore code\n";
  assert.equal(scanAll(text), 0);
  const scanner = new BlockScanner();
  scanner.scan(text);
  assert.equal(scanner.inFence, true);
});

test("a fence starts a block and its closing line ends one", () => {
  const text = "Look:\n```py\nx = 1\n```\nthen";
  const scanner = new BlockScanner();
  assert.equal(scanner.scan("Look:\n```py\nx = 1\n"), "Look:\n".length);
  assert.equal(scanner.scan(text), "Look:\n```py\nx = 1\n```\n".length);
  assert.equal(scanner.inFence, false);
});

test("a fence closes only with its own character, at least as long, and nothing after", () => {
  const scanner = new BlockScanner();
  scanner.scan("````\n```\n~~~~\n```` trailing\n");
  assert.equal(scanner.inFence, true);
  scanner.scan("````\n```\n~~~~\n```` trailing\n`````\n");
  assert.equal(scanner.inFence, false);
});

test("a line still being written is not scanned", () => {
  const scanner = new BlockScanner();
  assert.equal(scanner.scan("para\n"), 0);
  assert.equal(scanner.scan("para\n   "), 0); // a blank line, but not ended yet
  assert.equal(scanner.scan("para\n   \n"), "para\n   \n".length);
});

test("fed in any pieces, the scanner finds what one scan of the whole text finds", () => {
  const whole = scanAll(SAMPLE);
  assert.equal(whole, SAMPLE.length - PARTS[PARTS.length - 1].length);
  for (const sizes of [[1], [2, 3], [7], [1, 13, 2], [50]]) {
    const { seen } = scanInPieces(SAMPLE, sizes);
    assert.equal(seen[seen.length - 1], whole, String(sizes));
    // Boundaries only move forward, and never cut inside a fence.
    for (let i = 1; i < seen.length; i++) assert.ok(seen[i] >= seen[i - 1]);
    for (const cut of seen) assert.ok(ALLOWED.has(cut), `cut at ${cut}: ${JSON.stringify(SAMPLE.slice(cut - 10, cut))}`);
  }
});

// Loads a page module (an ES module served as a static file, outside any package.json with
// "type": "module") by its source, so Node needs no flag and the page no build step.
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import path from "node:path";

const here = path.dirname(fileURLToPath(import.meta.url));
export const CHAT = path.join(here, "..", "..", "messages_app", "static", "messages_app", "chat");

export async function loadModule(name) {
  const source = readFileSync(path.join(CHAT, name), "utf8");
  return import("data:text/javascript;base64," + Buffer.from(source).toString("base64"));
}

/* Where a Markdown text that is still being written may be cut into blocks that render on
 * their own: after a blank line, before a code fence opens and after it closes, never inside
 * a fence. Pure (unit-tested with `node --test tests/js/`); chat/markdown.js uses it. */

const FENCE = /^ {0,3}(`{3,}|~{3,})/;

export class BlockScanner {
  constructor() {
    this.pos = 0; // lines before this were scanned
    this.fence = null; // the open fence's marker ("```", "~~~~"), if any
    this.boundary = 0; // the last place the text may be cut
  }

  /* Scan the complete lines of `text` (the same text, grown) written since the last call.
   * Returns the last boundary: text[0:boundary] holds whole blocks only. */
  scan(text) {
    let start = this.pos;
    for (;;) {
      const end = text.indexOf("\n", start);
      if (end < 0) break;
      const line = text.slice(start, end);
      const fence = FENCE.exec(line);
      if (this.fence) {
        const closes =
          fence &&
          fence[1][0] === this.fence[0] &&
          fence[1].length >= this.fence.length &&
          !line.slice(fence[0].length).trim();
        if (closes) {
          this.fence = null;
          this.boundary = end + 1;
        }
      } else if (fence) {
        this.fence = fence[1];
        this.boundary = start;
      } else if (!line.trim()) {
        this.boundary = end + 1;
      }
      start = end + 1;
    }
    this.pos = start;
    return this.boundary;
  }

  get inFence() {
    return this.fence !== null;
  }
}

"""The chat page in a browser on the local stack: `python -m bench.page` (not in `make test`).

Starts the stack of bench/stack.py (daphne, the llm worker, Redis, the fake LLM; guards off;
production settings, so WhiteNoise serves the collected static files gzipped) and drives
Debian's chromium with Playwright:

- **Page weight**: the JS and CSS the page loads, gzipped (level 9), on first view and with
  the lazily loaded highlight.js; every request must go to the local server (no CDN).
  Budget: under 150 KB.
- **Time to interactive**: from navigation to the message box usable (socket open, history
  drawn), cold cache, median of --runs.
- **Delta-render cost, live**: a 2,000-token Markdown reply streamed through the stack; the
  page's hooks (globalThis.__chatPerf) time each `generation.delta` handler and each frame's
  render. The first and last quarters are compared: the cost must not grow with the reply.
- **Delta-render cost, in the page, worst case**: the page's own MarkdownView fed 2,000
  tokens with one render per token (as if every token had a frame of its own), against a
  naive view that renders the whole message again per token.

Figures go to stdout and into docs/chat-page.md between its bench markers.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import statistics
import subprocess
import sys
import time
import urllib.request
from typing import Any

from bench.stack import ROOT, Stack, StackConfig
from fake_llm.server import Script, split_text

CHROMIUM = "/usr/bin/chromium"
BUDGET_KB = 150.0
DOC = ROOT / "docs" / "chat-page.md"
START, END = "<!-- bench:page -->", "<!-- /bench:page -->"
PASSWORD = "bench-page-pw-1"

SETUP = """
import json
from django.contrib.auth import get_user_model
from messages_app.models import Character
from messages_app.services import conversation_create
user, _ = get_user_model().objects.get_or_create(username="pagebench")
user.set_password({password!r}); user.save()
character, _ = Character.objects.get_or_create(
    name="Bench Captain", defaults={{"greeting": "Ahoy!", "is_public": True, "max_tokens": 2048,
    "approval": Character.Approval.APPROVED}})
ids = [conversation_create(owner=user, character=character).pk for _ in range({n})]
print("IDS=" + json.dumps(ids))
"""


def markdown_reply(tokens: int) -> str:
    """Markdown as a model writes it (paragraphs, a list, code), cut at `tokens` tokens."""
    words = [
        "the",
        "ship",
        "sails",
        "north",
        "while",
        "the",
        "crew",
        "sings",
        "about",
        "the",
        "wind",
        "and",
        "the",
        "tide",
    ]
    parts: list[str] = []
    i = 0
    while len(split_text("".join(parts))) < tokens + 10:
        i += 1
        sentence = " ".join(words[(i + k) % len(words)] for k in range(14))
        parts.append(f"**Part {i}.** {sentence.capitalize()}, *again*. {sentence}.\n\n")
        if i % 4 == 0:
            parts.append("- first knot\n- second `knot`\n- third knot\n\n")
        if i % 6 == 0:
            code = "\n".join(f"    total = total + step({n})  # line {n}" for n in range(12))
            parts.append(f"```python\ndef knots(total):\n{code}\n    return total\n```\n\n")
    return "".join(split_text("".join(parts))[:tokens])


def one_paragraph(tokens: int) -> str:
    return " ".join(f"word{i}" for i in range(tokens))


def kb(n: int) -> float:
    return round(n / 1024, 1)


def collectstatic() -> None:
    env = dict(
        os.environ, DJANGO_SETTINGS_MODULE="messageservice.settings", ENVIRONMENT="development"
    )
    subprocess.run(
        [sys.executable, "manage.py", "collectstatic", "--noinput", "-v", "0"],
        cwd=ROOT,
        env=env,
        check=True,
        timeout=180,
    )


def login(browser: Any, url: str) -> Any:
    context = browser.new_context(viewport={"width": 1200, "height": 800})
    page = context.new_page()
    page.goto(f"{url}/accounts/login/")
    page.fill('input[name="username"]', "pagebench")
    page.fill('input[name="password"]', PASSWORD)
    page.click('[data-testid="login-form"] button[type="submit"]')
    page.wait_for_url(f"{url}/")
    state = context.storage_state()
    context.close()
    return state


def interactive(page: Any) -> None:
    page.wait_for_selector('[data-testid="connection-status"][data-state="open"]')
    page.wait_for_function("!document.querySelector('[data-testid=\"composer\"]').disabled")


def weight(browser: Any, url: str, state: Any, conv: int) -> dict[str, Any]:
    """JS and CSS the page loads (first view; then with a code block, so highlight.js too)."""
    context = browser.new_context(storage_state=state)
    page = context.new_page()
    seen: dict[str, bytes] = {}
    hosts: set[str] = set()

    def on_response(response: Any) -> None:
        hosts.add(re.sub(r"^\w+://([^/]+).*$", r"\1", response.url))
        if response.request.resource_type in ("script", "stylesheet"):
            try:
                seen[response.url] = response.body()
            except Exception:
                seen[response.url] = b""

    page.on("response", on_response)
    page.goto(f"{url}/#conversation-{conv}")
    interactive(page)
    page.wait_for_load_state("networkidle")
    first = dict(seen)
    # A reply with a code block: highlight.js is loaded then.
    page.evaluate(
        "import('/static/messages_app/chat/markdown.js').then(m => {"
        " const d = document.createElement('div'); d.append(m.renderMarkdown('```js\\nlet a = 1\\n```'));"
        " m.decorateCode(d); })"
    )
    page.wait_for_function(
        "performance.getEntriesByType('resource').some(e => e.name.includes('highlight.min.js'))"
    )
    page.wait_for_load_state("networkidle")
    context.close()

    def total(files: dict[str, bytes]) -> tuple[int, int, list[tuple[str, int, int]]]:
        rows = [
            (u.split("/static/")[-1], len(b), len(gzip.compress(b, 9))) for u, b in files.items()
        ]
        return sum(r[1] for r in rows), sum(r[2] for r in rows), sorted(rows, key=lambda r: -r[2])

    raw_first, gz_first, _ = total(first)
    raw_all, gz_all, rows = total(seen)
    return {
        "first_raw": raw_first,
        "first_gz": gz_first,
        "all_raw": raw_all,
        "all_gz": gz_all,
        "files": rows,
        "hosts": sorted(hosts),
    }


def time_to_interactive(browser: Any, url: str, state: Any, conv: int, runs: int) -> dict[str, Any]:
    cold: list[float] = []
    dcl: list[float] = []
    for _ in range(runs):
        context = browser.new_context(storage_state=state)  # a new cache each time
        page = context.new_page()
        t0 = time.perf_counter()
        page.goto(f"{url}/#conversation-{conv}")
        interactive(page)
        cold.append((time.perf_counter() - t0) * 1000)
        dcl.append(
            page.evaluate(
                "(() => { const n = performance.getEntriesByType('navigation')[0];"
                " return n.domContentLoadedEventEnd - n.startTime; })()"
            )
        )
        context.close()
    return {"tti_ms": statistics.median(cold), "tti_all": cold, "dcl_ms": statistics.median(dcl)}


def quarters(samples: list[float]) -> tuple[float, float, float, float]:
    """Mean and p95 of the first and the last quarter."""
    q = max(1, len(samples) // 4)
    first, last = samples[:q], samples[-q:]

    def p95(xs: list[float]) -> float:
        return sorted(xs)[min(len(xs) - 1, int(len(xs) * 0.95))]

    return statistics.fmean(first), p95(first), statistics.fmean(last), p95(last)


def live_delta_cost(
    browser: Any, stack: Stack, state: Any, conv: int, tokens: int, interval: float
) -> dict[str, Any]:
    text = markdown_reply(tokens)
    script = Script.from_text(text, token_interval=interval)
    request = urllib.request.Request(
        f"{stack.llm_url}/_fake/script",
        data=json.dumps(script.to_dict()).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    urllib.request.urlopen(request, timeout=10).close()
    context = browser.new_context(storage_state=state)
    context.add_init_script("globalThis.__chatPerf = {deltas: [], frames: [], finals: []};")
    page = context.new_page()
    page.set_default_timeout(120_000)
    page.goto(f"{stack.web_url}/#conversation-{conv}")
    interactive(page)
    page.fill('[data-testid="composer"]', "A long answer, please.")
    page.press('[data-testid="composer"]', "Enter")
    page.wait_for_selector(
        '[data-testid="message"][data-role="assistant"][data-status="streaming"]'
    )
    page.wait_for_selector(
        '[data-testid="message"][data-role="assistant"][data-status="completed"] >> nth=1'
    )
    perf = page.evaluate("globalThis.__chatPerf")
    shown = page.locator('[data-testid="message"][data-role="assistant"]').nth(1)
    ok = "def knots" in shown.inner_text()
    context.close()
    deltas = [d[1] for d in perf["deltas"]]
    frames = [f[1] for f in perf["frames"]]
    return {
        "tokens": len(script.tokens),
        "chars": len(text),
        "deltas": len(deltas),
        "frames": len(frames),
        "delta": quarters(deltas),
        "frame": quarters(frames),
        "delta_total_ms": sum(deltas),
        "frame_total_ms": sum(frames),
        "rendered": ok,
        # The one full render when the reply ends (the longest text rendered whole).
        "final_ms": max((f for f in perf["finals"]), key=lambda f: f[0], default=[0, 0.0])[1],
    }


SYNTHETIC = """
async ([tokens, naive]) => {
  const m = await import('/static/messages_app/chat/markdown.js');
  const node = document.createElement('div');
  node.className = 'content';
  document.querySelector('#message-items').append(node);
  const view = new m.MarkdownView(node);
  const times = [];
  let text = '';
  for (const token of tokens) {
    const t0 = performance.now();
    if (naive) {
      text += token;
      node.replaceChildren(m.renderMarkdown(text));
    } else {
      view.append(token);
      view.flush();
    }
    node.getBoundingClientRect(); // layout, as a frame would
    times.push(performance.now() - t0);
  }
  node.remove();
  return times;
}
"""


def synthetic_cost(browser: Any, url: str, state: Any, conv: int, tokens: int) -> dict[str, Any]:
    """Per-token cost with one render per token: the page's view against a naive one."""
    context = browser.new_context(storage_state=state)
    page = context.new_page()
    page.set_default_timeout(300_000)
    page.goto(f"{url}/#conversation-{conv}")
    interactive(page)
    out: dict[str, Any] = {}
    for name, text in (("markdown", markdown_reply(tokens)), ("paragraph", one_paragraph(tokens))):
        pieces = split_text(text)[:tokens]
        # Warm up the JIT and the highlighter first.
        page.evaluate(SYNTHETIC, [pieces[:200], False])
        for mode, naive in (("page", False), ("naive", True)):
            times = page.evaluate(SYNTHETIC, [pieces, naive])
            out[f"{name}/{mode}"] = {
                "first": statistics.fmean(times[:200]),
                "last": statistics.fmean(times[-200:]),
                "total": sum(times),
            }
    context.close()
    return out


def report(w: dict[str, Any], t: dict[str, Any], live: dict[str, Any], syn: dict[str, Any]) -> str:
    d, f = live["delta"], live["frame"]
    lines = [
        START,
        f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} with `python -m bench.page`"
        " (headless Debian chromium, daphne in production settings, WhiteNoise, one machine).",
        "",
        "| figure | value |",
        "|---|---|",
        f"| page weight, first view (JS + CSS, gzip -9) | {kb(w['first_gz'])} KB"
        f" ({kb(w['first_raw'])} KB raw) |",
        f"| page weight with highlight.js (loaded at the first code block) | {kb(w['all_gz'])} KB"
        f" ({kb(w['all_raw'])} KB raw); budget {BUDGET_KB:.0f} KB:"
        f" {'met' if kb(w['all_gz']) < BUDGET_KB else 'MISSED'} |",
        f"| hosts the page talked to | {', '.join(w['hosts'])} (no CDN) |",
        f"| time to interactive, cold cache (median of {len(t['tti_all'])}) | {t['tti_ms']:.0f} ms"
        f" (DOMContentLoaded {t['dcl_ms']:.0f} ms) |",
        f"| live reply | {live['tokens']} tokens, {live['chars']} characters, {live['deltas']}"
        f" deltas, {live['frames']} frame renders; rendered: {live['rendered']} |",
        f"| delta handler, first quarter / last quarter (mean, p95) | {d[0]:.3f} / {d[2]:.3f} ms"
        f" (p95 {d[1]:.3f} / {d[3]:.3f} ms) |",
        f"| frame render, first quarter / last quarter (mean, p95) | {f[0]:.3f} / {f[2]:.3f} ms"
        f" (p95 {f[1]:.3f} / {f[3]:.3f} ms) |",
        f"| all delta handlers + all frame renders of the reply | {live['delta_total_ms']:.0f} +"
        f" {live['frame_total_ms']:.0f} ms |",
        f"| the one full render of the whole reply when it ends | {live['final_ms']:.1f} ms |",
        "",
        "Chromium's clock (`performance.now()`) steps by 0.1 ms on a page that is not"
        " cross-origin isolated: the means are over many samples; a p95 of 0.100 ms is one step.",
        "",
        "One render per token, in the page (worst case: every token its own frame), ms per token,"
        " tokens 1–200 → 1801–2000, and the whole reply:",
        "",
        "| text | this page's view | naive (whole message per token) |",
        "|---|---|---|",
    ]
    for name in ("markdown", "paragraph"):
        page, naive = syn[f"{name}/page"], syn[f"{name}/naive"]
        lines.append(
            f"| {name} | {page['first']:.3f} → {page['last']:.3f} ms, {page['total']:.0f} ms |"
            f" {naive['first']:.3f} → {naive['last']:.3f} ms, {naive['total']:.0f} ms |"
        )
    lines += ["", "Files (gzip -9):", ""]
    lines += [f"- `{name}`: {kb(gz)} KB ({kb(raw)} KB raw)" for name, raw, gz in w["files"]]
    lines.append(END)
    return "\n".join(lines)


def write_doc(section: str) -> None:
    text = DOC.read_text() if DOC.exists() else f"# The chat page\n\n{START}\n{END}\n"
    if START not in text:
        text += f"\n{START}\n{END}\n"
    head, rest = text.split(START, 1)
    tail = rest.split(END, 1)[1] if END in rest else ""
    DOC.write_text(head + section + tail)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="cold loads for time to interactive")
    parser.add_argument("--tokens", type=int, default=2000, help="tokens of the measured reply")
    parser.add_argument(
        "--interval", type=float, default=0.005, help="seconds between the fake LLM's tokens"
    )
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)

    from playwright.sync_api import sync_playwright

    collectstatic()
    config = StackConfig(content_filtering=False, rate_limits=False, post_workers=False)
    with Stack(config) as stack:
        out = stack.manage(["shell", "-c", SETUP.format(password=PASSWORD, n=4)])
        ids = json.loads(out.split("IDS=", 1)[1].splitlines()[0])
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=CHROMIUM, args=["--headless", "--no-sandbox", "--disable-gpu"]
            )
            try:
                state = login(browser, stack.web_url)
                w = weight(browser, stack.web_url, state, ids[0])
                t = time_to_interactive(browser, stack.web_url, state, ids[1], args.runs)
                live = live_delta_cost(browser, stack, state, ids[2], args.tokens, args.interval)
                syn = synthetic_cost(browser, stack.web_url, state, ids[3], args.tokens)
            finally:
                browser.close()
    section = report(w, t, live, syn)
    print(section)
    if not args.no_write:
        write_doc(section)
        print(f"\nwritten to {DOC.relative_to(ROOT)}")
    local = all(host.startswith("127.0.0.1:") for host in w["hosts"])
    return 0 if kb(w["all_gz"]) < BUDGET_KB and local else 1


if __name__ == "__main__":
    sys.exit(main())

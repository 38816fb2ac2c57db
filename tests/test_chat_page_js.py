"""The chat page's code without a browser: the store's rules under Node's built-in test runner
(tests/js/*.test.mjs: merging messages, applying deltas by seq, resuming and switching
branches; node is needed, and where REQUIRE_TOOLS names it (CI) a missing node is a failure),
the vendored libraries' checksums, and no CDN."""

from __future__ import annotations

import hashlib
import re
import subprocess

from tests.helpers import ROOT
from tests.test_deploy_files import require_tool


def test_the_store_rules_pass_under_node_test():
    node = require_tool("node", "apt-get install nodejs (Node 20 or newer)")
    done = subprocess.run(
        [node, "--test", "tests/js/"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    # The runner found the tests (an empty directory passes too).
    assert "# pass 0" not in done.stdout and "# pass " in done.stdout, done.stdout[-2000:]


STATIC = ROOT / "messages_app" / "static" / "messages_app"
VENDOR = STATIC / "vendor"


def test_the_vendored_libraries_match_the_checksums_of_their_readme():
    readme = (VENDOR / "README.md").read_text()
    listed = dict(re.findall(r"- `([\w./-]+)`(?:(?!\n- )[\s\S])*?sha256 `([0-9a-f]{64})`", readme))
    on_disk = {str(path.relative_to(VENDOR)) for path in VENDOR.rglob("*") if path.is_file()} - {
        "README.md"
    }
    assert set(listed) == on_disk
    for name, digest in listed.items():
        assert hashlib.sha256((VENDOR / name).read_bytes()).hexdigest() == digest, name
    for library in ("marked", "dompurify", "highlight"):
        assert (VENDOR / library / "LICENSE").exists(), library


def test_the_chat_page_loads_nothing_from_another_host_and_has_no_inline_script():
    page = (ROOT / "templates" / "chat" / "index.html").read_text()
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)
    assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", page)  # only external scripts
    for path in [*STATIC.glob("chat/*.js"), STATIC / "chat.css"]:
        text = path.read_text()
        assert not re.search(r"""(import|from|url)\s*\(?\s*["']https?://""", text), path

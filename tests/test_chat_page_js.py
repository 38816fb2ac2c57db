"""The chat page's store rules under Node's built-in test runner (tests/js/*.test.mjs):
merging messages, applying deltas by seq, resuming and switching branches. Node is needed;
where REQUIRE_TOOLS names it (CI), a missing node is a failure."""

from __future__ import annotations

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

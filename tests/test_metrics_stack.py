"""Every metric that deploy/ refers to is exported, by a real stack, and moves with a real chat.

The stack runs as separate processes, as deployed: daphne, `rqworker llm`, `rqworker messages
default` (the message processor), `analytics_worker` and `safety_worker`, each worker with its
own METRICS_PORT,
all with a METRICS_TOKEN and DEBUG off; the fake LLM answers over HTTP. A user chats over REST
with a websocket open, has a message blocked by the content check and runs into a rate limit.
Then daphne's /metrics and every worker's exporter are scraped (prometheus-client's text
parser), and every metric name read out of the PromQL of the alert rules, the Grafana dashboard,
the HPAs (and any KEDA ScaledObject) must exist there and have moved: a counter above 0, a
histogram with observations, a gauge present. The names are parsed out of the files, not
listed here.
"""

from __future__ import annotations

import http.client
import importlib.util
import json
import re
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from websockets.sync.client import connect

from fake_llm import FakeLLMServer, Script
from messages_app.accounts.auth import ServiceRefreshToken
from messages_app.services import conversation_create
from messageservice.embedded import free_port
from tests.helpers import ROOT, worker_env
from tests.test_rate_limits import away_from_a_minute_boundary
from tests.test_safety_worker import INSULT, WorkerProcess

pytestmark = pytest.mark.django_db(transaction=True)

DEPLOY = ROOT / "deploy"
APP = "messageservice.asgi:application"
TOKEN = "test-metrics-token-0123456789abcdef"
SERVICE = "message-service"
LIMIT_PER_MINUTE = 2
# Series that deploy/ reads but that other exporters make, so this service never exports them:
EXTERNAL = {
    # Prometheus writes `up` itself for every target it scrapes (1 = the scrape worked).
    "up": "made by Prometheus for each scrape target",
}
EXTERNAL_PREFIXES = {
    # kube-state-metrics (Deployment replicas and the like), if a rule or panel uses it.
    "kube_": "kube-state-metrics",
    # node-exporter and cAdvisor, likewise.
    "node_": "node-exporter",
    "container_": "cAdvisor (kubelet)",
}
# A metric whose producer another part of issue 10 adds: until that module exists on the branch
# under test, the metric must exist (it starts at 0) but cannot have moved. Once it exists (after
# the merge), it must have moved like every other.
PRODUCER_MODULES = {"messages_processed_total": "messages_app.jobs"}


# ------------------------------------------------------------------- names out of deploy/


PROMQL_KEYWORDS = frozenset(
    {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right"}
    | {"bool", "offset", "atan2", "inf", "nan", "start", "end"}
)
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\[\]]*\]")
_LABEL_LIST = re.compile(
    r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", re.IGNORECASE
)
_VARIABLE = re.compile(r"\$\{[^}]*\}|\$\w+")
_IDENTIFIER = re.compile(r"(?<![\w:.])([A-Za-z_:][A-Za-z0-9_:]*)(\s*\()?")


def promql_metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: identifiers that are neither functions
    (followed by `(`), keywords and aggregation modifiers, label names (inside `{}` or a
    by/without/on/ignoring list), strings, durations, numbers nor Grafana variables."""
    text = _VARIABLE.sub(" ", _STRING.sub('""', expr))
    text = _LABEL_LIST.sub(" ", text)
    while _MATCHERS.search(text):
        text = _MATCHERS.sub(" ", text)
    text = _RANGE.sub(" ", text)
    names = set()
    for match in _IDENTIFIER.finditer(text):
        name, call = match.group(1), match.group(2)
        if call or name.lower() in PROMQL_KEYWORDS:
            continue
        names.add(name)
    return names


def _dashboard_exprs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        if isinstance(node.get("expr"), str):
            yield node["expr"]
        for value in node.values():
            yield from _dashboard_exprs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _dashboard_exprs(item)


def deploy_metric_names() -> dict[str, set[str]]:
    """Metric name -> the files that use it: the rules, the dashboard, the HPAs' external
    (and object/pods) metrics, KEDA ScaledObjects' Prometheus queries."""
    used: dict[str, set[str]] = defaultdict(set)
    rules = yaml.safe_load((DEPLOY / "monitoring" / "message_service_rules.yml").read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            for name in promql_metric_names(rule["expr"]):
                used[name].add("message_service_rules.yml")
    dashboard = json.loads((DEPLOY / "monitoring" / "grafana-dashboard.json").read_text())
    for expr in _dashboard_exprs(dashboard):
        for name in promql_metric_names(expr):
            used[name].add("grafana-dashboard.json")
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if not isinstance(doc, dict):
                continue
            if doc.get("kind") == "HorizontalPodAutoscaler":
                for metric in doc["spec"].get("metrics", []):
                    source = metric.get(metric["type"][0].lower() + metric["type"][1:], {})
                    metric_name = (source.get("metric") or {}).get("name")
                    if metric_name:
                        used[metric_name].add(path.name)
            if doc.get("kind") == "ScaledObject":
                for trigger in doc["spec"].get("triggers", []):
                    query = (trigger.get("metadata") or {}).get("query")
                    if trigger.get("type") == "prometheus" and query:
                        for name in promql_metric_names(query):
                            used[name].add(path.name)
    return dict(used)


def is_external(name: str) -> bool:
    return name in EXTERNAL or any(name.startswith(p) for p in EXTERNAL_PREFIXES)


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        (
            "histogram_quantile(0.95, sum by (le) "
            '(rate(llm_response_time_bucket{service="x"}[5m])))',
            {"llm_response_time_bucket"},
        ),
        (
            'sum(rate(http_requests_total{status=~"5.."}[5m])) '
            "/ sum(rate(http_requests_total[5m]))",
            {"http_requests_total"},
        ),
        (
            "sum(rate(messages_processed_total[10m])) == 0 and max(message_queue_size) > 0",
            {"messages_processed_total", "message_queue_size"},
        ),
        ('max by (kind) (workers_alive{kind=~"llm|x"}) == 0', {"workers_alive"}),
        ('up{job="message-workers"} == 0', {"up"}),
        (
            "sum without (pod) (a_total) / on (kind) group_left (x) b:rec:rate5m offset 5m",
            {"a_total", "b:rec:rate5m"},
        ),
        ("rate(x_total[$__rate_interval]) > bool 1e3", {"x_total"}),
        ('label_replace(y, "dst", "$1", "src", "(.*)")', {"y"}),
    ],
)
def test_metric_names_are_read_out_of_promql(expr: str, names: set[str]) -> None:
    assert promql_metric_names(expr) == names


def test_deploy_refers_to_the_service_metrics() -> None:
    """The parser finds what deploy/ uses (a parser that found nothing would prove nothing)."""
    used = deploy_metric_names()
    ours = {name for name in used if not is_external(name)}
    assert len(ours) >= 10, used
    assert {"llm_response_time_bucket", "message_queue_size", "llm_queue_size"} <= ours


# ------------------------------------------------------------------------ the stack


class Stack:
    def __init__(self, web_port: int, worker_ports: dict[str, int]) -> None:
        self.web_port = web_port
        self.worker_ports = worker_ports


def _get(
    port: int, path: str, headers: dict[str, str] | None = None, method: str = "GET"
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, headers={"Host": "localhost", **(headers or {})})
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def _request(
    port: int, method: str, path: str, token: str, body: Any = None
) -> tuple[int, dict[str, Any]]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Host": "localhost", "Authorization": f"Bearer {token}"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        conn.request(method, path, body=data, headers=headers)
        response = conn.getresponse()
        raw = response.read()
        return response.status, json.loads(raw) if raw else {}
    finally:
        conn.close()


def _wait_until(check: Any, what: str, proc: subprocess.Popen[bytes], seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            if check():
                return
        except OSError:
            pass
        assert proc.poll() is None, f"{what}: the process exited"
        assert time.monotonic() < deadline, f"{what} did not come up"
        time.sleep(0.2)


def scrape(port: int, host: str = "localhost") -> str:
    status, headers, body = _get(
        port, "/metrics", {"Authorization": f"Bearer {TOKEN}", "Host": host}
    )
    assert status == 200, (port, status, body[:200])
    assert headers["content-type"].startswith("text/plain"), headers
    return body.decode()


@pytest.fixture(scope="module")
def stack(
    django_db_setup: Any,
    fake_llm_server: FakeLLMServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stack]:
    logs = tmp_path_factory.mktemp("metrics-stack")
    common = {
        "METRICS_TOKEN": TOKEN,
        "METRICS_ADDR": "127.0.0.1",
        "ENABLE_CONTENT_FILTERING": "true",
        "ENABLE_RATE_LIMITS": "true",
        "MAX_MESSAGES_PER_MINUTE": str(LIMIT_PER_MINUTE),
        "MAX_MESSAGES_PER_HOUR": "1000",
        "MAX_MESSAGES_PER_DAY": "1000",
        "MAX_REPLIES_IN_FLIGHT": "100",
        "DAILY_TOKEN_QUOTA": "0",
        "LOG_LEVEL": "WARNING",
    }
    ports = {
        "llm": free_port(),
        "messages": free_port(),
        "analytics": free_port(),
        "safety": free_port(),
    }
    web_port = free_port()
    assert len({*ports.values(), web_port}) == 5, "free_port gave one port twice"
    safety = WorkerProcess(logs / "safety.log", METRICS_PORT=str(ports["safety"]), **common).start()
    procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(name: str, argv: list[str], **env: str) -> None:
        with (logs / f"{name}.log").open("ab") as out:
            procs[name] = subprocess.Popen(
                argv,
                cwd=ROOT,
                env=worker_env(fake_llm_server, **common, **env),
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    manage = [sys.executable, "manage.py"]
    start("llm", [*manage, "rqworker", "llm"], METRICS_PORT=str(ports["llm"]))
    start(
        "messages",
        [*manage, "rqworker", "messages", "default"],
        METRICS_PORT=str(ports["messages"]),
    )
    start("analytics", [*manage, "analytics_worker"], METRICS_PORT=str(ports["analytics"]))
    start(
        "web",
        [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(web_port), APP],
    )
    try:
        _wait_until(lambda: _get(web_port, "/health")[0] in (200, 503), "daphne", procs["web"])
        for kind in ("llm", "messages", "analytics"):
            _wait_until(
                lambda kind=kind: _get(
                    ports[kind], "/metrics", {"Authorization": f"Bearer {TOKEN}"}
                )[0]
                == 200,
                f"the {kind} worker's exporter",
                procs[kind],
            )
        safety.ready()
        assert safety.proc is not None
        _wait_until(
            lambda: _get(ports["safety"], "/metrics", {"Authorization": f"Bearer {TOKEN}"})[0]
            == 200,
            "the safety worker's exporter",
            safety.proc,
        )
        yield Stack(web_port, ports)
    finally:
        for proc in procs.values():
            proc.terminate()
        for name, proc in procs.items():
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                print(f"{name} did not stop on SIGTERM:\n{(logs / f'{name}.log').read_text()}")
        safety.stop()


def parse(text: str) -> dict[str, dict[str, Any]]:
    """Family name -> {"type", "samples": [(sample name, labels, value)]}."""
    families: dict[str, dict[str, Any]] = {}
    for family in text_string_to_metric_families(text):
        entry = families.setdefault(family.name, {"type": family.type, "samples": []})
        entry["samples"] += [(s.name, s.labels, s.value) for s in family.samples]
    return families


def _chat(stack: Stack, fake_llm: FakeLLMServer, user: Any, character: Any) -> dict[str, Any]:
    """A real chat over REST with a websocket open; what it saw."""
    seen: dict[str, Any] = {}
    conversation = conversation_create(owner=user, character=character)
    token = str(ServiceRefreshToken.for_user(user).access_token)
    port = stack.web_port
    status, ticket = _request(port, "POST", "/api/v1/ws-tickets/", token)
    assert status == 201, ticket
    url = f"ws://127.0.0.1:{port}/ws/conversations/{conversation.pk}/?ticket={ticket['ticket']}"
    origin: Any = "http://localhost"
    with connect(url, origin=origin, proxy=None, open_timeout=20) as ws:
        # The socket is open: daphne's gauge says so.
        deadline = time.monotonic() + 10
        while True:
            value = _sample(parse(scrape(port)), "websocket_connections")
            if value == 1 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        seen["websockets_open"] = value
        away_from_a_minute_boundary()
        fake_llm.push(Script.from_text("Ahoy! A fine day for sailing, friend."))
        path = f"/api/v1/conversations/{conversation.pk}/messages/"
        status, sent = _request(port, "POST", path, token, {"content": "Hello, captain!"})
        assert status == 202, sent
        ended = _frames_until_end(ws, sent["generation_id"])
        assert ended["type"] == "generation.completed", ended
        # The content check blocks an insult (SAFETY_INPUT_ACTION=block): 422, reply blocked.
        status, blocked = _request(port, "POST", path, token, {"content": INSULT})
        assert status == 422, blocked
        assert blocked["error"]["code"] == "content_blocked"
        # Past the per-minute limit: 429.
        statuses = []
        for n in range(LIMIT_PER_MINUTE + 2):
            status, _ = _request(port, "POST", path, token, {"content": f"again {n}"})
            statuses.append(status)
            if status == 429:
                break
        assert statuses[-1] == 429, statuses
    seen["statuses"] = statuses
    return seen


def _frames_until_end(ws: Any, generation_id: int, seconds: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + seconds
    while True:
        frame = json.loads(ws.recv(timeout=max(0.1, deadline - time.monotonic())))
        if frame.get("generation_id") == generation_id and frame["type"] in (
            "generation.completed",
            "generation.failed",
            "generation.cancelled",
        ):
            return frame


def _sample(families: dict[str, dict[str, Any]], name: str, **labels: str) -> float | None:
    total = None
    for family in families.values():
        for sample_name, sample_labels, value in family["samples"]:
            if sample_name == name and labels.items() <= sample_labels.items():
                total = (total or 0.0) + value
    return total


def _moved(scrapes: dict[str, dict[str, dict[str, Any]]], name: str) -> tuple[bool, bool, str]:
    """(exists, moved, how) of the series `name` over every process's scrape."""
    for families in scrapes.values():
        for family_name, family in families.items():
            if not any(s[0] == name for s in family["samples"]):
                continue
            kind = family["type"]
            if kind == "histogram":
                count = sum(
                    v
                    for scrape in scrapes.values()
                    for s, _, v in scrape.get(family_name, {"samples": []})["samples"]
                    if s == f"{family_name}_count"
                )
                return True, count > 0, f"histogram, {count:g} observations"
            values = [
                v
                for scrape in scrapes.values()
                for s, _, v in scrape.get(family_name, {"samples": []})["samples"]
                if s == name
            ]
            if kind == "counter":
                return True, sum(values) > 0, f"counter, total {sum(values):g}"
            return True, True, f"{kind}, values {values}"
    return False, False, "no such series in any scrape"


def test_every_metric_deploy_refers_to_is_exported_by_the_running_stack_and_moves(
    stack: Stack, fake_llm_server: FakeLLMServer, user: Any, character: Any
) -> None:
    used = deploy_metric_names()
    wanted = sorted(name for name in used if not is_external(name))
    seen = _chat(stack, fake_llm_server, user, character)
    assert seen["websockets_open"] == 1, seen

    pending = {
        name: module
        for name, module in PRODUCER_MODULES.items()
        if importlib.util.find_spec(module) is None
    }
    deadline = time.monotonic() + 40
    while True:
        # daphne is scraped as Prometheus does: by pod address, which ALLOWED_HOSTS lacks.
        scrapes = {"web": parse(scrape(stack.web_port, host="10.1.2.3:8004"))}
        for kind, port in stack.worker_ports.items():
            scrapes[kind] = parse(scrape(port))
        results = {name: _moved(scrapes, name) for name in wanted}
        missing = {
            name: how
            for name, (exists, moved, how) in results.items()
            if not exists or (not moved and name not in pending)
        }
        # Every worker kind of the stack beats its liveness (within 10 s; the test's Redis
        # flush at its start took the earlier beats).
        for kind in ("llm", "messages", "analytics", "safety"):
            if not _sample(scrapes["web"], "workers_alive", kind=kind):
                missing[f"workers_alive{{kind={kind}}}"] = "0: no beat"
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert not missing, f"used by deploy/, not exported or not moved: {missing}"

    # Every sample of every process carries service="message-service", _bucket series included.
    for process, families in scrapes.items():
        for family in families.values():
            for sample_name, labels, _ in family["samples"]:
                assert labels.get("service") == SERVICE, (process, sample_name, labels)
    web = scrapes["web"]
    assert _sample(web, "message_queue_size") is not None
    # The global values are read by daphne alone (the rules take max() over the web pods).
    for kind in stack.worker_ports:
        for name in ("message_queue_size", "llm_queue_size", "workers_alive"):
            assert _sample(scrapes[kind], name) is None, (kind, name)
    # Requests are counted by method and numeric status; the scrapes themselves are not.
    assert (_sample(web, "http_requests_total", method="POST", status="202") or 0) >= 1
    assert (_sample(web, "http_requests_total", method="POST", status="422") or 0) >= 1
    assert (_sample(web, "http_requests_total", method="POST", status="429") or 0) >= 1
    labels_seen = [
        labels
        for family in web.values()
        for name, labels, _ in family["samples"]
        if name == "http_requests_total"
    ]
    assert all(re.fullmatch(r"[1-5]\d\d", labels["status"]) for labels in labels_seen)
    assert {labels["method"] for labels in labels_seen} <= {"GET", "POST", "OTHER"}
    # The reply was counted in the llm worker, where it ended: completed, no error code.
    llm = scrapes["llm"]
    assert (_sample(llm, "generations_ended_total", status="completed", code="none") or 0) >= 1
    assert (_sample(llm, "llm_tokens_used_total", kind="completion") or 0) > 0
    assert (_sample(llm, "llm_tokens_used_total", kind="prompt") or 0) > 0
    assert (_sample(llm, "llm_time_to_first_token_seconds_count") or 0) >= 1
    # The insult was flagged (harassment) and its reply ended blocked, wherever that happened.
    flagged = sum(
        _sample(s, "moderation_flags_total", category="harassment") or 0 for s in scrapes.values()
    )
    assert flagged == 1
    blocked = sum(
        _sample(s, "generations_ended_total", status="blocked", code="content_blocked") or 0
        for s in scrapes.values()
    )
    assert blocked == 1
    assert _sample(web, "rate_limit_rejections_total", limit="minute") == 1
    # The websocket is closed again.
    deadline = time.monotonic() + 10
    while _sample(parse(scrape(stack.web_port)), "websocket_connections") != 0:
        assert time.monotonic() < deadline, "websocket_connections did not go back to 0"
        time.sleep(0.1)


def test_the_scrape_endpoints_want_the_bearer_token(stack: Stack) -> None:
    endpoints = [stack.web_port, *stack.worker_ports.values()]
    for port in endpoints:
        assert _get(port, "/metrics")[0] == 401, port
        status, headers, _ = _get(port, "/metrics", {"Authorization": "Bearer wrong"})
        assert status == 401 and headers["www-authenticate"].startswith("Bearer"), port
        assert _get(port, "/metrics", {"Authorization": f"Basic {TOKEN}"})[0] == 401, port
        assert _get(port, "/metrics", {"Authorization": f"Bearer {TOKEN}"})[0] == 200, port
    # A worker exporter serves /metrics only.
    for port in stack.worker_ports.values():
        assert _get(port, "/", {"Authorization": f"Bearer {TOKEN}"})[0] == 404, port

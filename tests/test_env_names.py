"""One source for env names: messageservice/settings.py.

The names are derived from the settings' code with `ast` (every `env("NAME")`,
`env.str/int/bool/float/list/json/db_url(...)("NAME", ...)` call, plus the secrets the settings
also read as files: the names of SECRET_ENV_NAMES and their `<NAME>_FILE` variants). No list is
kept here. Then:

1. **Only known names.** `.env.example`, the app services of `docker-compose.yml`, every
   service of `docker-compose.staging.yml` (its environment, and its secrets, whose
   upper-cased names are env names read from /run/secrets), and Kubernetes
   (`configmap.yaml` data, `secrets.template.yaml` stringData/data, and the `env` of every
   container of every workload under deploy/k8s) name only settings the code reads, or names
   that the `messageservice` package reads from os.environ itself (PROCESS_KIND,
   DJANGO_SETTINGS_MODULE; derived with `ast` too). A typo or a setting that was removed fails
   here. Names read by another program (Python) are listed in NOT_SETTINGS with it.

2. **What a deployment must set, it sets.** A setting "has no safe default" when its default,
   read out of the same `ast`, serves only a developer's machine: the published development key
   (`INSECURE_DEFAULT_KEY`), a SQLite file, the embedded Redis (`EMBEDDED_REDIS_URL`), or a
   URL or host list on the loopback (`127.0.0.1`, `localhost`). Such a setting must be given by
   every deployment: in docker-compose.yml's app environment, in docker-compose.staging.yml (as
   environment or as a secret), and in Kubernetes (ConfigMap, Secret template or container
   env). Exceptions are settings of an optional backend that is off by default
   (OPTIONAL_BACKENDS). METRICS_TOKEN is required as well although its default (off) is safe:
   deploy/monitoring scrapes with it, so without it the metrics would not be collected.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers import ROOT

SETTINGS = ROOT / "messageservice" / "settings.py"
ENV_METHODS = {"str", "int", "bool", "float", "list", "json", "db_url", "url", "dict", "tuple"}
NOT_SETTINGS = {
    # Read by Python itself, not by the service.
    "PYTHONUNBUFFERED": "python",
    "PYTHONDONTWRITEBYTECODE": "python",
}
OPTIONAL_BACKENDS = {
    "SAFETY_LLAMA_GUARD_URL": "only with SAFETY_BACKEND=llama_guard (default: local)",
}
ALSO_REQUIRED = {"METRICS_TOKEN": "deploy/monitoring/prometheus.yml scrapes with it"}
LOOPBACK = ("127.0.0.1", "localhost", "sqlite")
DEV_ONLY_NAMES = {"INSECURE_DEFAULT_KEY", "EMBEDDED_REDIS_URL"}


def _is_env_call(node: ast.Call) -> bool:
    func = node.func
    if isinstance(func, ast.Name):
        return func.id == "env"
    return (
        isinstance(func, ast.Attribute)
        and func.attr in ENV_METHODS
        and isinstance(func.value, ast.Name)
        and func.value.id == "env"
    )


def settings_names() -> dict[str, ast.expr | None]:
    """Env name -> the default expression (None without one), from settings.py's AST."""
    tree = ast.parse(SETTINGS.read_text())
    names: dict[str, ast.expr | None] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and _is_env_call(node) and node.args:
            first = node.args[0]
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                default = next((k.value for k in node.keywords if k.arg == "default"), None)
                names[first.value] = default
        if (
            isinstance(node, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id == "SECRET_ENV_NAMES" for t in node.targets)
            and isinstance(node.value, ast.Tuple)
        ):
            for element in node.value.elts:
                assert isinstance(element, ast.Constant) and isinstance(element.value, str)
                names.setdefault(element.value, None)
                names[f"{element.value}_FILE"] = None
    return names


def _is_os_environ(node: ast.expr) -> bool:
    return (
        isinstance(node, ast.Attribute)
        and node.attr == "environ"
        and isinstance(node.value, ast.Name)
        and node.value.id == "os"
    )


def process_env_names() -> dict[str, str]:
    """Names the service's own package reads straight from os.environ (outside the settings),
    e.g. PROCESS_KIND in messageservice/logs.py: name -> file."""
    names = {}
    for path in sorted((ROOT / "messageservice").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            key: ast.expr | None = None
            if isinstance(node, ast.Subscript) and _is_os_environ(node.value):
                key = node.slice
            elif isinstance(node, ast.Call) and node.args:
                func = node.func
                if (
                    isinstance(func, ast.Attribute)
                    and func.attr in {"get", "setdefault", "pop"}
                    and _is_os_environ(func.value)
                ) or (
                    isinstance(func, ast.Attribute)
                    and func.attr == "getenv"
                    and isinstance(func.value, ast.Name)
                    and func.value.id == "os"
                ):
                    key = node.args[0]
            if isinstance(key, ast.Constant) and isinstance(key.value, str):
                names[key.value] = path.relative_to(ROOT).as_posix()
    return names


def known_names() -> set[str]:
    return set(settings_names()) | set(process_env_names())


def has_no_safe_default(default: ast.expr | None) -> bool:
    if default is None:
        return False
    for node in ast.walk(default):
        if isinstance(node, ast.Name) and node.id in DEV_ONLY_NAMES:
            return True
        if (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and any(marker in node.value for marker in LOOPBACK)
        ):
            return True
    return False


def required_names() -> set[str]:
    required = {
        name
        for name, default in settings_names().items()
        if has_no_safe_default(default) and name not in OPTIONAL_BACKENDS
    }
    return required | set(ALSO_REQUIRED)


# ------------------------------------------------------------------------- the files


def env_example_names() -> set[str]:
    text = (ROOT / ".env.example").read_text()
    return set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]*)=", text, flags=re.M))


def _env_keys(environment: Any) -> set[str]:
    if isinstance(environment, dict):
        return set(environment)
    if isinstance(environment, list):
        return {item.split("=", 1)[0] for item in environment}
    return set()


def _is_app_service(service: dict[str, Any]) -> bool:
    image = str(service.get("image", ""))
    return "build" in service or "message-service" in image


def compose_names(path: Path) -> dict[str, set[str]]:
    """App service -> the env names it gets (environment keys and upper-cased secrets)."""
    data = yaml.safe_load(path.read_text())
    names = {}
    for name, service in data["services"].items():
        if not _is_app_service(service):
            continue
        given = _env_keys(service.get("environment"))
        for secret in service.get("secrets", []):
            source = secret["source"] if isinstance(secret, dict) else secret
            given.add(source.upper())
        names[name] = given
    return names


def k8s_names() -> dict[str, set[str]]:
    """File (or workload) -> env names: ConfigMap data, Secret (template) keys, container env."""
    names: dict[str, set[str]] = {}
    for path in sorted((ROOT / "deploy" / "k8s").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if not isinstance(doc, dict):
                continue
            kind = doc.get("kind")
            where = f"{path.name}:{kind}/{doc.get('metadata', {}).get('name')}"
            if kind == "ConfigMap" and doc["metadata"]["name"].startswith("message-service"):
                names[where] = set(doc.get("data", {}))
            elif kind == "Secret":
                names[where] = set(doc.get("stringData", {})) | set(doc.get("data", {}))
            else:
                spec = doc.get("spec", {})
                template = (spec.get("jobTemplate", {}).get("spec") or spec).get("template", {})
                pod = template.get("spec", {})
                for container in [*pod.get("containers", []), *pod.get("initContainers", [])]:
                    env = {item["name"] for item in container.get("env", [])}
                    if env:
                        names[f"{where}:{container['name']}"] = env
    return names


def all_places() -> dict[str, set[str]]:
    places = {".env.example": env_example_names()}
    for compose in ("docker-compose.yml", "docker-compose.staging.yml"):
        for service, names in compose_names(ROOT / compose).items():
            places[f"{compose}:{service}"] = names
    places.update({f"deploy/k8s/{k}": v for k, v in k8s_names().items()})
    return places


# ------------------------------------------------------------------------- the tests


def test_names_are_derived_from_the_settings() -> None:
    names = settings_names()
    assert len(names) >= 80, sorted(names)
    assert {"DATABASE_URL", "REDIS_URL", "LLM_SERVICE_URL", "DJANGO_SECRET_KEY"} <= set(names)
    assert "DJANGO_SECRET_KEY_FILE" in names  # the file variant of a secret
    assert "MONGODB_URL" in names  # read only to be refused, but read
    # The derivation agrees with the regex of test_settings_startup (a different reading).
    text = SETTINGS.read_text()
    assert set(re.findall(r'env(?:\.\w+)?\(\s*"([A-Z_]+)"', text)) <= set(names)


def test_names_read_outside_the_settings_are_derived_too() -> None:
    names = process_env_names()
    assert names.get("PROCESS_KIND") == "messageservice/logs.py", names


def test_the_no_safe_default_rule() -> None:
    names = settings_names()
    required = required_names()
    assert {
        "DJANGO_SECRET_KEY",
        "JWT_SECRET_KEY",
        "DATABASE_URL",
        "REDIS_URL",
        "LLM_SERVICE_URL",
        "ALLOWED_HOSTS",
        "METRICS_TOKEN",
    } <= required, required
    # Safe defaults are not required: a number, a flag, the production log level...
    for name in ("PORT", "LOG_LEVEL", "ENABLE_RATE_LIMITS", "MAX_MESSAGES_PER_MINUTE"):
        assert name not in required and names[name] is not None
    assert not set(OPTIONAL_BACKENDS) & required
    assert has_no_safe_default(names["SAFETY_LLAMA_GUARD_URL"])  # the exemption is needed


def test_every_place_lists_only_known_names() -> None:
    known = known_names() | set(NOT_SETTINGS)
    places = all_places()
    assert any(p.startswith("docker-compose.staging.yml:") for p in places)
    assert any(p.startswith("deploy/k8s/configmap.yaml") for p in places)
    assert any(p.startswith("deploy/k8s/secrets.template.yaml") for p in places)
    unknown = {place: sorted(names - known) for place, names in places.items() if names - known}
    assert not unknown, f"names that no setting reads: {unknown}"


@pytest.mark.parametrize(
    "deployment", ["docker-compose.yml", "docker-compose.staging.yml", "deploy/k8s"]
)
def test_every_deployment_sets_what_has_no_safe_default(deployment: str) -> None:
    required = required_names()
    if deployment == "deploy/k8s":
        given = set().union(*k8s_names().values())
        missing = {"deploy/k8s": sorted(required - given)} if required - given else {}
    else:
        services = compose_names(ROOT / deployment)
        assert services, deployment
        missing = {
            service: sorted(required - names)
            for service, names in services.items()
            if required - names
        }
    assert not missing, f"{deployment} leaves to a developer default: {missing}"

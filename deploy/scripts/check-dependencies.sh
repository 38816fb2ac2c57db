#!/usr/bin/env bash
# Checks that the Message Service's dependencies answer, with the env names the settings read:
#   DATABASE_URL     the database (postgres://... or sqlite:///...)
#   REDIS_URL        Redis (redis://, rediss://, unix://, or a Sentinel set:
#                    redis+sentinel://host:26379[,host:26379]/service_name[/db])
#   LLM_SERVICE_URL  the OpenAI-compatible LLM (GET $LLM_SERVICE_URL/models, bearer LLM_API_KEY),
#                    when DEFAULT_LLM_PROVIDER is lmstudio / openai_compatible (the default)
# Unset names take the settings' defaults. One line per dependency: "ok <name> ..." or
# "FAIL <name>: <reason>"; exit status 1 when any fails.
# Needs a python3 with psycopg and redis (the image's, or the project's .venv: PYTHON=...).
set -euo pipefail

usage() {
    cat <<'USAGE'
Usage: check-dependencies.sh [-h]

Checks the database (DATABASE_URL), Redis (REDIS_URL) and the LLM (LLM_SERVICE_URL) that the
Message Service would use, and prints one line per dependency. Exits 1 if any is unreachable.

Environment:
  DATABASE_URL          default sqlite:///db.sqlite3 (as the settings)
  REDIS_URL             default redis://127.0.0.1:8006/0 (the embedded Redis)
  LLM_SERVICE_URL       default http://127.0.0.1:8005/v1
  DEFAULT_LLM_PROVIDER  default lmstudio; openai/anthropic skip the LLM_SERVICE_URL check
  LLM_API_KEY           sent as the bearer token to the LLM
  CHECK_TIMEOUT         seconds per check (default 5)
  PYTHON                the interpreter (default: python3 on PATH)
USAGE
}

if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
    usage
    exit 0
fi
if [[ $# -gt 0 ]]; then
    usage >&2
    exit 2
fi

PYTHON="${PYTHON:-python3}"
export DATABASE_URL="${DATABASE_URL:-sqlite:///db.sqlite3}"
export REDIS_URL="${REDIS_URL:-redis://127.0.0.1:8006/0}"
export LLM_SERVICE_URL="${LLM_SERVICE_URL:-http://127.0.0.1:8005/v1}"
export DEFAULT_LLM_PROVIDER="${DEFAULT_LLM_PROVIDER:-lmstudio}"
export LLM_API_KEY="${LLM_API_KEY:-not-needed}"
export CHECK_TIMEOUT="${CHECK_TIMEOUT:-5}"

failed=0

check() {
    local name="$1" code="$2" out
    if out=$("$PYTHON" -c "$code" 2>&1); then
        echo "ok   ${name}: ${out}"
    else
        echo "FAIL ${name}: $(printf '%s' "$out" | tail -n 1)"
        failed=1
    fi
}

check database '
import os, sqlite3, sys
from urllib.parse import urlsplit, unquote
url = os.environ["DATABASE_URL"]
timeout = float(os.environ["CHECK_TIMEOUT"])
parts = urlsplit(url)
try:
    if parts.scheme.startswith("sqlite"):
        path = unquote(url.split(":///", 1)[1]) if ":///" in url else ""
        if path and path != ":memory:" and not os.path.exists(path):
            raise OSError(f"no such file {path}")
        sqlite3.connect(path or ":memory:", timeout=timeout).execute("select 1")
        print(f"sqlite {path}")
    elif parts.scheme in ("postgres", "postgresql", "pgsql", "postgis"):
        import psycopg
        dsn = url.replace(parts.scheme + "://", "postgresql://", 1)
        with psycopg.connect(dsn, connect_timeout=max(1, int(timeout))) as conn:
            version = conn.execute("show server_version").fetchone()[0]
        print(f"PostgreSQL {version} at {parts.hostname}:{parts.port or 5432}{parts.path}")
    else:
        raise ValueError(f"unsupported scheme {parts.scheme!r}")
except Exception as exc:
    where = "%s://%s:%s%s" % (parts.scheme, parts.hostname or "", parts.port or "", parts.path)
    reason = ("%s: %s" % (type(exc).__name__, exc)).replace("\n", " ")
    sys.exit("DATABASE_URL (%s) does not answer: %s" % (where, reason))
'

check redis '
import os, sys
from urllib.parse import parse_qs, unquote, urlsplit
import redis
import redis.sentinel
url = os.environ["REDIS_URL"]
timeout = float(os.environ["CHECK_TIMEOUT"])
parts = urlsplit(url)
netloc = parts.netloc.rsplit("@", 1)[-1]
where = "%s://%s%s" % (parts.scheme, netloc, parts.path)
options = {"socket_timeout": timeout, "socket_connect_timeout": timeout}
try:
    if parts.scheme in ("redis+sentinel", "rediss+sentinel"):
        # redis+sentinel://[[user]:password@]host:port[,host:port]/service_name[/db]
        user = unquote(parts.username or "") or None
        password = unquote(parts.password or "") or None
        hosts = []
        for item in netloc.split(","):
            host, _, port = item.rpartition(":") if ":" in item else (item, "", "")
            hosts.append((host.strip("[]"), int(port or 26379)))
        path = [unquote(p) for p in parts.path.split("/") if p]
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        sentinel_kwargs = dict(options)
        if query.get("sentinel_password"):
            sentinel_kwargs["password"] = query["sentinel_password"]
        sentinel = redis.sentinel.Sentinel(hosts, sentinel_kwargs=sentinel_kwargs)
        try:
            primary = sentinel.discover_master(path[0])
        except redis.sentinel.MasterNotFoundError:
            sys.exit("REDIS_URL (%s): no Sentinel answers with a primary for %r" % (where, path[0]))
        client = sentinel.master_for(
            path[0], db=int(path[1]) if len(path) > 1 else 0, username=user,
            password=password, ssl=parts.scheme.startswith("rediss"), **options
        )
        where += " (primary %s:%s)" % primary
    else:
        client = redis.Redis.from_url(url, **options)
    client.ping()
    info = client.info("server")
    print("Redis %s at %s" % (info.get("redis_version", "?"), where))
except Exception as exc:
    reason = ("%s: %s" % (type(exc).__name__, exc)).replace("\n", " ")
    sys.exit("REDIS_URL (%s) does not answer: %s" % (where, reason))
'

case "$DEFAULT_LLM_PROVIDER" in
    lmstudio | openai_compatible)
        check llm '
import json, os, sys, urllib.request
base = os.environ["LLM_SERVICE_URL"].rstrip("/")
timeout = float(os.environ["CHECK_TIMEOUT"])
request = urllib.request.Request(
    base + "/models", headers={"Authorization": "Bearer " + os.environ["LLM_API_KEY"]}
)
try:
    with urllib.request.urlopen(request, timeout=timeout) as response:
        body = json.loads(response.read() or b"{}")
    models = [m.get("id", "?") for m in body.get("data", [])] if isinstance(body, dict) else []
    print("%s models: %s" % (base, ", ".join(models) or "(none listed)"))
except Exception as exc:
    reason = ("%s: %s" % (type(exc).__name__, exc)).replace("\n", " ")
    sys.exit("LLM_SERVICE_URL (%s/models) does not answer: %s" % (base, reason))
'
        ;;
    *)
        echo "skip llm: DEFAULT_LLM_PROVIDER=${DEFAULT_LLM_PROVIDER} does not use LLM_SERVICE_URL"
        ;;
esac

if [[ "$failed" -ne 0 ]]; then
    echo "check-dependencies: some dependencies are not reachable" >&2
    exit 1
fi
echo "check-dependencies: all dependencies answer"

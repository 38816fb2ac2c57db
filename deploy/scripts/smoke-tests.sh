#!/usr/bin/env bash
# Smoke tests against a running Message Service (the seed's scripts/smoke-tests.sh): /health,
# /ready, /metrics (with METRICS_TOKEN when set), then a chat over REST: a JWT for
# SMOKE_USERNAME/SMOKE_PASSWORD, a new conversation, one message, and its reply polled until it
# completes. Each step prints one line; the first failing step stops the run with exit 1.
# Needs only bash and python3, so it also runs inside deploy/Dockerfile's image (no curl there).
set -euo pipefail

usage() {
    cat <<'USAGE'
Usage: smoke-tests.sh [-h] [BASE_URL]

BASE_URL defaults to $SMOKE_BASE_URL, else http://127.0.0.1:${PORT:-8004}.

Environment:
  SMOKE_USERNAME, SMOKE_PASSWORD  an account of the service (required)
  SMOKE_CHARACTER_ID              the character to chat with (default: the first one listed)
  SMOKE_MESSAGE                   what to send (default: "Hello! This is a smoke test.")
  SMOKE_TIMEOUT                   seconds to wait for the reply to complete (default 60)
  SMOKE_KEEP=1                    keep the conversation (it is deleted by default)
  METRICS_TOKEN                   bearer token for /metrics; unset: /metrics is not checked
  SMOKE_HOST                      Host header to send (default: the URL's host)
USAGE
}

case "${1:-}" in
    -h | --help)
        usage
        exit 0
        ;;
esac
if [[ $# -gt 1 ]]; then
    usage >&2
    exit 2
fi

BASE_URL="${1:-${SMOKE_BASE_URL:-http://127.0.0.1:${PORT:-8004}}}"
BASE_URL="${BASE_URL%/}"
SMOKE_MESSAGE="${SMOKE_MESSAGE:-Hello! This is a smoke test.}"
SMOKE_TIMEOUT="${SMOKE_TIMEOUT:-60}"
: "${SMOKE_USERNAME:?set SMOKE_USERNAME (and SMOKE_PASSWORD) to an account of the service}"
: "${SMOKE_PASSWORD:?set SMOKE_PASSWORD}"

if ! python3 -c 'import json, urllib.request' 2>/dev/null; then
    echo "FAIL python3 (with its standard library) is not on PATH" >&2
    exit 1
fi
BODY="$(mktemp)"
trap 'rm -f "$BODY"' EXIT

fail() {
    echo "FAIL $*" >&2
    exit 1
}

# request METHOD PATH [JSON] [AUTH]: the body goes to $BODY, the status code to stdout (000 when
# the service cannot be reached; the reason is then in $BODY).
request() {
    python3 -c '
import sys, urllib.error, urllib.request
method, url, body_file, data, auth, host = sys.argv[1:7]
headers = {"Accept": "application/json"}
if data:
    headers["Content-Type"] = "application/json"
if auth:
    headers["Authorization"] = "Bearer " + auth
if host:
    headers["Host"] = host
request = urllib.request.Request(url, data=data.encode() or None, headers=headers, method=method)
try:
    with urllib.request.urlopen(request, timeout=30) as response:
        status, body = response.status, response.read()
except urllib.error.HTTPError as error:
    status, body = error.code, error.read()
except OSError as error:
    status, body = 0, str(error).encode()
with open(body_file, "wb") as out:
    out.write(body)
print("%03d" % status)
' "$1" "${BASE_URL}$2" "$BODY" "${3:-}" "${4:-}" "${SMOKE_HOST:-}"
}

# json EXPR: evaluates a Python expression on the JSON body (as `d`) and prints the result.
json() {
    python3 -c '
import json, sys
d = json.load(open(sys.argv[1]))
value = eval(sys.argv[2], {"d": d})
print(json.dumps(value) if isinstance(value, (dict, list)) else value)
' "$BODY" "$1"
}

json_arg() {
    python3 -c 'import json, sys; print(json.dumps(dict(zip(sys.argv[1::2], sys.argv[2::2]))))' "$@"
}

snippet() {
    head -c 300 "$BODY" | tr '\n' ' '
}

echo "smoke tests against ${BASE_URL}"

for path in /health /ready; do
    code="$(request GET "$path")"
    [[ "$code" == 200 ]] || fail "${path}: HTTP ${code}: $(snippet)"
    echo "ok   ${path}: $(snippet)"
done

if [[ -n "${METRICS_TOKEN:-}" ]]; then
    code="$(request GET /metrics "" "$METRICS_TOKEN")"
    [[ "$code" == 200 ]] || fail "/metrics: HTTP ${code}"
    grep -q '^http_requests_total' "$BODY" || fail "/metrics: no http_requests_total series"
    echo "ok   /metrics: $(grep -c '^[a-z]' "$BODY") samples"
else
    echo "skip /metrics: METRICS_TOKEN is not set"
fi

code="$(request POST /api/v1/auth/token/ "$(json_arg username "$SMOKE_USERNAME" password "$SMOKE_PASSWORD")")"
[[ "$code" == 200 ]] || fail "login as ${SMOKE_USERNAME}: HTTP ${code}: $(snippet)"
access="$(json 'd["access"]')"
echo "ok   login: a JWT for ${SMOKE_USERNAME}"

character="${SMOKE_CHARACTER_ID:-}"
if [[ -z "$character" ]]; then
    code="$(request GET /api/v1/characters/ "" "$access")"
    [[ "$code" == 200 ]] || fail "list characters: HTTP ${code}: $(snippet)"
    character="$(json '(d["results"] if isinstance(d, dict) else d)[0]["id"] if (d["results"] if isinstance(d, dict) else d) else ""')"
    [[ -n "$character" ]] || fail "list characters: the account sees no character (set SMOKE_CHARACTER_ID)"
fi

code="$(request POST /api/v1/conversations/ "{\"character_id\": ${character}}" "$access")"
[[ "$code" == 201 ]] || fail "create a conversation with character ${character}: HTTP ${code}: $(snippet)"
conversation="$(json 'd["id"]')"
echo "ok   conversation ${conversation} with character ${character}"
if [[ "${SMOKE_KEEP:-0}" != 1 ]]; then
    trap 'request DELETE "/api/v1/conversations/${conversation}/" "" "$access" >/dev/null; rm -f "$BODY"' EXIT
fi

client_id="smoke-$(date +%s)-$$"
code="$(request POST "/api/v1/conversations/${conversation}/messages/" \
    "$(json_arg content "$SMOKE_MESSAGE" client_id "$client_id")" "$access")"
[[ "$code" == 202 ]] || fail "send a message: HTTP ${code}: $(snippet)"
reply="$(json 'd["assistant_message"]["id"]')"
echo "ok   message sent; reply ${reply} queued"

deadline=$((SECONDS + SMOKE_TIMEOUT))
status=""
while :; do
    code="$(request GET "/api/v1/conversations/${conversation}/messages/" "" "$access")"
    [[ "$code" == 200 ]] || fail "read the conversation: HTTP ${code}: $(snippet)"
    status="$(json "next((m['status'] for m in (d['results'] if isinstance(d, dict) else d) if m['id'] == ${reply}), 'missing')")"
    case "$status" in
        completed) break ;;
        queued | streaming) ;;
        *)
            detail="$(json "next((m for m in (d['results'] if isinstance(d, dict) else d) if m['id'] == ${reply}), {})")"
            fail "reply ${reply} ended ${status}: ${detail:0:300}"
            ;;
    esac
    ((SECONDS < deadline)) || fail "reply ${reply} still ${status} after ${SMOKE_TIMEOUT}s"
    sleep 0.5
done
content="$(json "next(m['content'] for m in (d['results'] if isinstance(d, dict) else d) if m['id'] == ${reply})")"
[[ -n "$content" ]] || fail "reply ${reply} completed empty"
echo "ok   reply ${reply} completed: ${content:0:80}"
echo "smoke tests passed"

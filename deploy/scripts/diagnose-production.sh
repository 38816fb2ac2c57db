#!/usr/bin/env bash
# Production diagnostics (the seed's scripts/diagnose-production.sh), read-only. Gathers:
#   - the Deployments, Services, HPAs, PDBs and the pods that are not Running;
#   - the latest events, and `kubectl top pods` (needs metrics-server);
#   - recent error lines of the web pods and of every worker Deployment;
#   - from inside a web pod: /ready (database, Redis, migrations) and the RQ queues
#     (`manage.py rqstats`: queued, started, failed jobs per queue, and the workers);
#   - from Prometheus: queue sizes, the 5xx ratio, p95 LLM latency, live workers, targets down.
# A section that fails prints why and the run goes on; the exit status is 1 when any did.
set -euo pipefail

usage() {
    cat <<'USAGE'
Usage: diagnose-production.sh [-h]

Environment:
  NAMESPACE       default message-service
  PROMETHEUS_URL  default http://prometheus:9090 (empty: skip the metrics queries)
  SINCE           how far back to read logs (default 10m)
  KUBECTL         kubectl binary (default kubectl)
USAGE
}

case "${1:-}" in
    -h | --help)
        usage
        exit 0
        ;;
esac
if [[ $# -gt 0 ]]; then
    usage >&2
    exit 2
fi

NAMESPACE="${NAMESPACE:-message-service}"
PROMETHEUS_URL="${PROMETHEUS_URL-http://prometheus:9090}"
SINCE="${SINCE:-10m}"
KUBECTL="${KUBECTL:-kubectl}"
k() { "$KUBECTL" -n "$NAMESPACE" "$@"; }
failed=()

# section TITLE COMMAND...: runs the command; a failure is reported and remembered.
section() {
    local title="$1"
    shift
    echo
    echo "== ${title}"
    if ! "$@"; then
        echo "(${title}: failed)"
        failed+=("$title")
    fi
}

not_running() {
    k get pods -o wide --no-headers | awk '$3 != "Running" && $3 != "Completed" { print; n++ } END { if (!n) print "(every pod is Running)" }'
}

recent_errors() {
    local deployment
    for deployment in $(k get deployment -l app=message-service -o name); do
        echo "-- ${deployment}"
        k logs "$deployment" --all-containers --since="$SINCE" --tail=2000 |
            grep -iE '"level": *"(error|critical)"|error|traceback' | tail -n 10 || true
    done
}

latest_events() {
    k get events --sort-by=.lastTimestamp | tail -n 20
}

in_web_pod() {
    k exec deploy/message-service -c message-service -- "$@"
}

ready_from_inside() {
    in_web_pod python -c '
import os, urllib.request, urllib.error
url = "http://127.0.0.1:%s/ready" % os.environ.get("PORT", "8004")
request = urllib.request.Request(url, headers={"Host": "localhost"})
try:
    with urllib.request.urlopen(request, timeout=10) as r:
        print(r.status, r.read().decode())
except urllib.error.HTTPError as e:
    print(e.code, e.read().decode())
    raise SystemExit(1)
'
}

queues() {
    in_web_pod python manage.py rqstats
}

prometheus() {
    local name query
    while IFS='|' read -r name query; do
        printf '%-28s ' "$name"
        curl --silent --show-error --max-time 10 --get "${PROMETHEUS_URL%/}/api/v1/query" \
            --data-urlencode "query=${query}" |
            python3 -c '
import json, sys
body = json.load(sys.stdin)
if body.get("status") != "success":
    sys.exit("query failed: %s" % body.get("error"))
rows = body["data"]["result"]
if not rows:
    print("(no data)")
for row in rows:
    labels = ",".join("%s=%s" % kv for kv in sorted(row["metric"].items()) if kv[0] != "__name__")
    print("%s {%s}" % (row["value"][1], labels))
'
    done <<'QUERIES'
message_queue_size|max(message_queue_size)
llm_queue_size|max(llm_queue_size)
5xx ratio (5m)|sum(rate(http_requests_total{status=~"5.."}[5m])) / sum(rate(http_requests_total[5m]))
llm p95 seconds (5m)|histogram_quantile(0.95, sum by (le) (rate(llm_response_time_bucket[5m])))
workers_alive|max by (kind) (workers_alive)
targets down|up{job=~"message-service|message-workers"} == 0
QUERIES
}

echo "Message Service diagnostics: namespace ${NAMESPACE}, $(date -u +%Y-%m-%dT%H:%M:%SZ)"
section "Service status" k get deployment,service,hpa,pdb -l app=message-service
section "Pods not Running" not_running
section "Latest events" latest_events
section "Resource use" k top pods
section "Recent errors (${SINCE})" recent_errors
section "Readiness from inside a web pod" ready_from_inside
section "RQ queues and workers" queues
if [[ -n "$PROMETHEUS_URL" ]]; then
    section "Key metrics (${PROMETHEUS_URL})" prometheus
fi

echo
if ((${#failed[@]})); then
    echo "diagnostics done; failed sections: $(IFS=', '; echo "${failed[*]}")"
    exit 1
fi
echo "diagnostics done"

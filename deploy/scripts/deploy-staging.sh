#!/usr/bin/env bash
# Deploys a release to the staging Swarm (the seed's scripts/deploy-staging.sh):
#   1. check-dependencies.sh (the database, Redis and the LLM answer; SKIP_DEPENDENCY_CHECK=1
#      skips it when they are only reachable from inside the Swarm network);
#   2. creates the external secrets of docker-compose.staging.yml that do not exist yet, each
#      from its env var (DJANGO_SECRET_KEY, JWT_SECRET_KEY, DATABASE_URL, REDIS_URL,
#      METRICS_TOKEN, LLM_API_KEY) or from the file named by <NAME>_FILE. Swarm secrets are
#      immutable: an existing one is kept (remove it to rotate: docker secret rm NAME);
#   3. docker stack deploy of docker-compose.staging.yml with VERSION and IMAGE;
#   4. waits for the migration job, then for $STAGING_URL/health, then runs smoke-tests.sh
#      (when SMOKE_USERNAME is set), and posts to SLACK_WEBHOOK_URL if it is set.
# The image is built and pushed by CI beforehand (docker build -f deploy/Dockerfile).
set -euo pipefail

usage() {
    cat <<'USAGE'
Usage: deploy-staging.sh [-h] [VERSION]

VERSION (default: $VERSION, else latest) is the image tag to deploy.

Environment:
  IMAGE                  default registry.company.com/message-service
  STACK_NAME             default message-service-staging
  STAGING_URL            default http://staging-api.company.com/message-service
  DJANGO_SECRET_KEY, JWT_SECRET_KEY, DATABASE_URL, REDIS_URL, METRICS_TOKEN, LLM_API_KEY
                         (or <NAME>_FILE): the secrets to create when missing
  SKIP_DEPENDENCY_CHECK  1: do not run check-dependencies.sh
  SMOKE_USERNAME, SMOKE_PASSWORD  run smoke-tests.sh against STAGING_URL
  HEALTH_TIMEOUT         seconds to wait for /health (default 300)
  SLACK_WEBHOOK_URL      notified when set
  DOCKER                 docker binary (default docker)
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

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "${HERE}/../.." && pwd)"
export VERSION="${1:-${VERSION:-latest}}"
export IMAGE="${IMAGE:-registry.company.com/message-service}"
STACK_NAME="${STACK_NAME:-message-service-staging}"
STAGING_URL="${STAGING_URL:-http://staging-api.company.com/message-service}"
HEALTH_TIMEOUT="${HEALTH_TIMEOUT:-300}"
DOCKER="${DOCKER:-docker}"
COMPOSE_FILE="${ROOT}/docker-compose.staging.yml"
SECRETS=(DJANGO_SECRET_KEY JWT_SECRET_KEY DATABASE_URL REDIS_URL METRICS_TOKEN LLM_API_KEY)

echo "deploying ${IMAGE}:${VERSION} as stack ${STACK_NAME}"

if [[ "${SKIP_DEPENDENCY_CHECK:-0}" != 1 ]]; then
    "${HERE}/check-dependencies.sh"
fi

# secret_value NAME: the env var, else the content of <NAME>_FILE, else empty.
secret_value() {
    local name="$1" file_var="${1}_FILE"
    if [[ -n "${!name:-}" ]]; then
        printf '%s' "${!name}"
    elif [[ -n "${!file_var:-}" ]]; then
        cat "${!file_var}"
    elif [[ "$name" == LLM_API_KEY ]]; then
        printf 'not-needed'
    fi
}

# Every missing secret is named before any is created.
declare -A values=()
missing=0
for name in "${SECRETS[@]}"; do
    secret="${name,,}"
    if "$DOCKER" secret inspect "$secret" >/dev/null 2>&1; then
        echo "secret ${secret}: exists, kept"
        continue
    fi
    values[$name]="$(secret_value "$name")"
    if [[ -z "${values[$name]}" ]]; then
        echo "FAIL secret ${secret} does not exist: set ${name} or ${name}_FILE" >&2
        missing=1
    fi
done
((missing == 0)) || exit 1
for name in "${!values[@]}"; do
    printf '%s' "${values[$name]}" | "$DOCKER" secret create "${name,,}" - >/dev/null
    echo "secret ${name,,}: created"
done

"$DOCKER" stack deploy --with-registry-auth --detach=true -c "$COMPOSE_FILE" "$STACK_NAME"

deadline=$((SECONDS + HEALTH_TIMEOUT))
echo "waiting for the migration job"
migration_states() {
    "$DOCKER" service ps "${STACK_NAME}_migrate" --no-trunc --format '{{.CurrentState}} {{.Error}}'
}
while :; do
    states="$(migration_states)"
    [[ $'\n'"$states" != *$'\n'Complete* ]] || break
    # The job retries (restart_policy max_attempts 3); three failed tasks end the wait.
    failures="$(grep -c '^Failed' <<<"$states" || true)"
    if ((failures >= 3)); then
        "$DOCKER" service logs --tail 50 "${STACK_NAME}_migrate" >&2 || true
        echo "FAIL the migration job failed: $(head -n 1 <<<"$states")" >&2
        exit 1
    fi
    if ((SECONDS >= deadline)); then
        echo "FAIL the migration job did not complete in ${HEALTH_TIMEOUT}s" >&2
        exit 1
    fi
    sleep 5
done

echo "waiting for ${STAGING_URL}/health"
until curl --silent --fail --max-time 10 "${STAGING_URL}/health" >/dev/null; do
    if ((SECONDS >= deadline)); then
        echo "FAIL ${STAGING_URL}/health did not answer 200 in ${HEALTH_TIMEOUT}s" >&2
        exit 1
    fi
    sleep 10
done

if [[ -n "${SMOKE_USERNAME:-}" ]]; then
    "${HERE}/smoke-tests.sh" "$STAGING_URL"
else
    echo "skip smoke tests: SMOKE_USERNAME is not set"
fi

echo "deployed ${IMAGE}:${VERSION} to staging"
if [[ -n "${SLACK_WEBHOOK_URL:-}" ]]; then
    payload="$(python3 -c 'import json, sys; print(json.dumps({"text": sys.argv[1]}))' \
        "Message Service ${VERSION} deployed to staging")"
    curl --silent --show-error --max-time 10 -X POST -H 'Content-type: application/json' \
        --data "$payload" "$SLACK_WEBHOOK_URL" >/dev/null || echo "warning: the Slack notification failed" >&2
fi

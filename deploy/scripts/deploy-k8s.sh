#!/usr/bin/env bash
# Deploys a release to Kubernetes (the seed's scripts/deploy-k8s.sh), with kustomize:
#   1. checks the kubectl context (it must contain $REQUIRE_CONTEXT, "production" by default)
#      and that the Secret message-service-secrets exists (deploy/k8s/secrets.template.yaml);
#   2. deletes the previous migration Job (a Job's pod template is immutable) and applies
#      deploy/k8s through a temporary overlay that sets the image to $IMAGE:$VERSION, so the
#      migration Job, the web Deployment and every worker Deployment run the same release;
#   3. waits for the migration Job, then for the rollout of every Deployment of the app;
#   4. waits for the web pods to be ready and shows the HPAs.
set -euo pipefail

usage() {
    cat <<'USAGE'
Usage: deploy-k8s.sh [-h] [VERSION]

VERSION (default: $VERSION, else latest) is the image tag to deploy.

Environment:
  IMAGE            image name (default registry.company.com/message-service)
  NAMESPACE        default message-service
  K8S_DIR          the kustomization to apply (default deploy/k8s next to this script)
  REQUIRE_CONTEXT  the kubectl context must contain this (default production; empty: any)
  ROLLOUT_TIMEOUT  per rollout and for the migration Job (default 600s)
  KUBECTL          kubectl binary (default kubectl)
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
VERSION="${1:-${VERSION:-latest}}"
IMAGE="${IMAGE:-registry.company.com/message-service}"
NAMESPACE="${NAMESPACE:-message-service}"
K8S_DIR="$(cd "${K8S_DIR:-${HERE}/../k8s}" && pwd)"
REQUIRE_CONTEXT="${REQUIRE_CONTEXT-production}"
ROLLOUT_TIMEOUT="${ROLLOUT_TIMEOUT:-600s}"
KUBECTL="${KUBECTL:-kubectl}"
k() { "$KUBECTL" "$@"; }

echo "deploying ${IMAGE}:${VERSION} to namespace ${NAMESPACE} from ${K8S_DIR}"

context="$(k config current-context)"
echo "kubectl context: ${context}"
if [[ -n "$REQUIRE_CONTEXT" && "$context" != *"$REQUIRE_CONTEXT"* ]]; then
    echo "FAIL the kubectl context ${context} does not contain '${REQUIRE_CONTEXT}' (set REQUIRE_CONTEXT)" >&2
    exit 1
fi

k apply -f "${K8S_DIR}/namespace.yaml"
if ! k -n "$NAMESPACE" get secret message-service-secrets >/dev/null; then
    echo "FAIL secret message-service-secrets is missing in ${NAMESPACE}: create it first (deploy/k8s/secrets.template.yaml)" >&2
    exit 1
fi

overlay="$(mktemp -d)"
trap 'rm -rf "$overlay"' EXIT
cat >"${overlay}/kustomization.yaml" <<YAML
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - $(realpath --relative-to="$overlay" "$K8S_DIR")
images:
  - name: registry.company.com/message-service
    newName: ${IMAGE}
    newTag: "${VERSION}"
YAML

echo "applying (the previous migration Job is replaced)"
k -n "$NAMESPACE" delete job message-service-migrate --ignore-not-found
k apply -k "$overlay"

echo "waiting for the migrations"
k -n "$NAMESPACE" wait --for=condition=complete job/message-service-migrate --timeout="$ROLLOUT_TIMEOUT"

deployments="$(k -n "$NAMESPACE" get deployment -l app=message-service -o name)"
if [[ -z "$deployments" ]]; then
    echo "FAIL no Deployment labelled app=message-service in ${NAMESPACE}" >&2
    exit 1
fi
for deployment in $deployments; do
    echo "waiting for ${deployment}"
    k -n "$NAMESPACE" rollout status "$deployment" --timeout="$ROLLOUT_TIMEOUT"
done

k -n "$NAMESPACE" wait --for=condition=ready pod -l app=message-service,component=api --timeout=300s
k -n "$NAMESPACE" get hpa
echo "deployed ${IMAGE}:${VERSION} to ${NAMESPACE}"

#!/usr/bin/env bash
# Prepare a kind cluster for tests/e2e (the `kind` marker), the same way locally and in
# .github/workflows/e2e-kind.yaml: upstream operators from their pinned published releases
# (never copied into this repo), Graft's images built from this checkout (CPU trainer base),
# Graft installed with its Helm chart and checked with `helm test`.
# Needs: docker, kind, kubectl, helm 3 on PATH.
set -euo pipefail
cd "$(dirname "$0")/../.."

CLUSTER="${CLUSTER:-graft-e2e}"
KIND_NODE_IMAGE="${KIND_NODE_IMAGE:-kindest/node:v1.33.1}"   # Kubeflow Trainer v2.3 needs >= 1.31
TRAINING_OPERATOR_REF="v1.9.0"                                # kubeflow.org/v1 PyTorchJob
TRAINER_REF="v2.3.0"                                          # trainer.kubeflow.org TrainJob
KUBERAY_CHART_VERSION="1.7.0"                                 # ray.io/v1 RayJob
VERSION="$(python3 -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')"
TRAINER_IMAGE="ghcr.io/graft-dev/graft-trainer:${VERSION}"    # the spec's default image
OPERATOR_IMAGE="ghcr.io/graft-dev/graft-operator:${VERSION}"

if ! kind get clusters | grep -qx "$CLUSTER"; then
  kind create cluster --name "$CLUSTER" --image "$KIND_NODE_IMAGE" --wait 180s
fi
kubectl config use-context "kind-${CLUSTER}"

docker build --build-arg BASE=python:3.11-slim-bookworm \
  --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu \
  --build-arg VERSION="$VERSION" -t "$TRAINER_IMAGE" .
docker build --target operator --build-arg VERSION="$VERSION" -t "$OPERATOR_IMAGE" .
kind load docker-image --name "$CLUSTER" "$TRAINER_IMAGE" "$OPERATOR_IMAGE"

kubectl apply --server-side \
  -k "github.com/kubeflow/training-operator.git/manifests/overlays/standalone?ref=${TRAINING_OPERATOR_REF}"
kubectl apply --server-side \
  -k "github.com/kubeflow/trainer.git/manifests/overlays/manager?ref=${TRAINER_REF}"
helm upgrade --install kuberay-operator kuberay-operator \
  --repo https://ray-project.github.io/kuberay-helm/ --version "$KUBERAY_CHART_VERSION" \
  --namespace kuberay-system --create-namespace --wait --timeout 5m
kubectl wait --for=condition=Available deployment --all -n kubeflow --timeout=300s
kubectl wait --for=condition=Available deployment --all -n kubeflow-system --timeout=300s

# The chart's ClusterTrainingRuntime needs Trainer's CRDs, installed just above.
helm upgrade --install graft charts/graft --namespace graft-system --create-namespace \
  --wait --timeout 5m
helm test graft --namespace graft-system --logs

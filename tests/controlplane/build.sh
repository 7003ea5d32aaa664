#!/usr/bin/env bash
# Builds what the integration suite runs on loopback: etcd, kube-apiserver,
# kube-controller-manager, kube-scheduler and helm, from the upstream Go modules pinned in
# versions.env (one wrapper module per upstream project beside this script), into a cache
# outside the repo with one folder per component and version. A binary already there is kept,
# so a warm machine pays nothing and a fresh one pays once.
#
#   tests/controlplane/build.sh     # builds what is missing; prints NAME=PATH per binary
#   GRAFT_CONTROLLERS="training-operator kuberay trainer" tests/controlplane/build.sh   # + controllers
#
# GRAFT_CONTROLPLANE_CACHE overrides the cache root (default ~/.cache/graft-controlplane).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=versions.env
source "$here/versions.env"
root="${GRAFT_CONTROLPLANE_CACHE:-$HOME/.cache/graft-controlplane}"
mkdir -p "$root"

step() { printf 'controlplane build: %s\n' "$*" >&2; }

# build COMPONENT VERSION LDFLAGS PACKAGE... : one `go build` of several commands from the
# wrapper module tests/controlplane/COMPONENT, so what they share compiles once; the output
# lands in a temp folder that is renamed into place whole.
build() {
  local component="$1" version="$2" ldflags="$3"; shift 3
  local dest="$root/$component-$version"
  [ -d "$dest" ] && return 0
  # One build of a component and version at a time (sessions or CI jobs may share the cache):
  # a second run waits here, then finds the first one's result instead of renaming its own
  # build into it.
  local lock
  exec {lock}>"$root/.lock-$component-$version"
  flock "$lock"
  if [ -d "$dest" ]; then exec {lock}>&-; return 0; fi
  local out log="$root/build-$component-$version.log"
  out="$(mktemp -d "$root/.build-$component.XXXXXX")"
  step "building $component $version: $* (log: $log)"
  local began=$SECONDS
  if ! (cd "$here/$component" && CGO_ENABLED=0 go build -trimpath -tags selinux,notest \
        -ldflags "-s -w $ldflags" -o "$out/" "$@") >"$log" 2>&1; then
    step "FAILED: go build of $component $version; last lines of $log:"
    tail -n 30 "$log" >&2
    rm -rf "$out"
    exit 1
  fi
  mv "$out" "$dest"
  exec {lock}>&-
  step "built $component $version in $((SECONDS - began)) s"
}

k8s_minor="${KUBERNETES_VERSION#v1.}"; k8s_minor="${k8s_minor%%.*}"
k8s_flags=""
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  k8s_flags+=" -X $pkg.gitVersion=$KUBERNETES_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$k8s_minor"
  k8s_flags+=" -X $pkg.gitTreeState=clean"
done
build kubernetes "$KUBERNETES_VERSION" "$k8s_flags" \
  k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
  k8s.io/kubernetes/cmd/kube-scheduler
build etcd "$ETCD_VERSION" "" go.etcd.io/etcd/server/v3 go.etcd.io/etcd/etcdctl/v3
# The server module's main package is its root folder: go names that binary "server".
[ -x "$root/etcd-$ETCD_VERSION/server" ] && mv "$root/etcd-$ETCD_VERSION/server" "$root/etcd-$ETCD_VERSION/etcd"
build helm "$HELM_VERSION" "-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" helm.sh/helm/v3/cmd/helm

# Controllers: only those a run names (GRAFT_CONTROLLERS, space-separated: training-operator,
# kuberay, trainer; tests/controlplane/controllers.py names what its test asks for).
wanted="${GRAFT_CONTROLLERS-}"
controllers=""
want() { case " $wanted " in *" $1 "*) return 0;; esac; return 1; }
if want training-operator; then
  build training-operator "$TRAINING_OPERATOR_VERSION" "" \
    github.com/kubeflow/training-operator/cmd/training-operator.v1
  controllers+=" training-operator:training-operator-$TRAINING_OPERATOR_VERSION/training-operator.v1"
fi
if want kuberay; then
  build kuberay "$KUBERAY_VERSION" "" github.com/ray-project/kuberay/ray-operator
  controllers+=" kuberay:kuberay-$KUBERAY_VERSION/ray-operator"
fi
if want trainer; then
  # One build of both: the Trainer controller manager and the JobSet controller it needs.
  build trainer "$TRAINER_VERSION-jobset-$JOBSET_VERSION" "" \
    github.com/kubeflow/trainer/v2/cmd/trainer-controller-manager sigs.k8s.io/jobset
  controllers+=" trainer:trainer-$TRAINER_VERSION-jobset-$JOBSET_VERSION/trainer-controller-manager"
  controllers+=" jobset:trainer-$TRAINER_VERSION-jobset-$JOBSET_VERSION/jobset"
fi

for entry in kube-apiserver:kubernetes-$KUBERNETES_VERSION kube-controller-manager:kubernetes-$KUBERNETES_VERSION \
             kube-scheduler:kubernetes-$KUBERNETES_VERSION etcd:etcd-$ETCD_VERSION etcdctl:etcd-$ETCD_VERSION \
             helm:helm-$HELM_VERSION; do
  name="${entry%%:*}" path="$root/${entry#*:}/${entry%%:*}"
  [ -x "$path" ] || { step "FAILED: $path missing after the build"; exit 1; }
  echo "$name=$path"
done
for entry in $controllers; do
  name="${entry%%:*}" path="$root/${entry#*:}"
  [ -x "$path" ] || { step "FAILED: $path missing after the build"; exit 1; }
  echo "$name=$path"
done

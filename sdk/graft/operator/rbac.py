"""The exact RBAC rules the operator needs, as data: the Helm chart and kustomize render these
(one source of truth), and each rule names the code that uses it.

All rules go into one ClusterRole: the operator watches cluster-wide by default, and kopf
needs cluster-scoped reads (namespaces, CRDs) even when limited to one namespace.
"""

from __future__ import annotations

RULES: list[dict[str, list[str]]] = [
    # kopf: watch FineTuneJobs, store its progress/diff-base annotations (handlers.py).
    {"apiGroups": ["graft.dev"], "resources": ["finetunejobs"], "verbs": ["list", "watch", "patch"]},
    # status mirroring (kube.Kube.patch_status).
    {"apiGroups": ["graft.dev"], "resources": ["finetunejobs/status"], "verbs": ["patch"]},
    # children: create, read back on 409, watch for mirroring, patch suspend (kube.Kube).
    {"apiGroups": ["kubeflow.org"], "resources": ["pytorchjobs"],
     "verbs": ["get", "list", "watch", "create", "patch"]},
    {"apiGroups": ["ray.io"], "resources": ["rayjobs"],
     "verbs": ["get", "list", "watch", "create", "patch"]},
    {"apiGroups": ["trainer.kubeflow.org"], "resources": ["trainjobs"],
     "verbs": ["get", "list", "watch", "create", "patch"]},
    # the spec ConfigMap: create, read back on 409.
    {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "create"]},
    # pods: watch + list for restarts/why/final summary; logs for graft-progress lines.
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch"]},
    {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]},
    # Events: ours (kube.Kube.event) and kopf's handler-failure warnings.
    {"apiGroups": [""], "resources": ["events"], "verbs": ["create"]},
    {"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["create"]},
    # kopf: discover namespaces and CRDs appearing at runtime.
    {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["list", "watch"]},
    {"apiGroups": ["apiextensions.k8s.io"], "resources": ["customresourcedefinitions"],
     "verbs": ["list", "watch"]},
    # kopf peering: one active instance (needs kopf's peering CRDs installed).
    {"apiGroups": ["kopf.dev"], "resources": ["clusterkopfpeerings", "kopfpeerings"],
     "verbs": ["list", "watch", "patch", "get"]},
]

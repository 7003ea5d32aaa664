"""The FineTuneJob operator: `kubectl apply` a FineTuneJob, get a PyTorchJob/RayJob/TrainJob.

`run()` is what `graft operator` and `python -m graft.operator` call. kopf and the kubernetes
client are imported only when it runs, so `import graft` stays fast.
"""

from __future__ import annotations

PEERING_NAME = "graft-operator"


def run(
    namespace: str | None = None,
    *,
    standalone: bool = False,
    peering_name: str = PEERING_NAME,
    liveness_endpoint: str | None = None,
    verbose: bool = False,
) -> None:
    """Run the operator until SIGINT/SIGTERM.

    Watches one namespace, or the whole cluster when `namespace` is None. Unless `standalone`,
    kopf peering (the ClusterKopfPeering/KopfPeering object `peering_name`) keeps exactly one
    instance active, so several replicas can run for availability.
    """
    import logging

    import kopf

    import graft.operator.handlers  # noqa: F401  (registers the handlers with kopf)

    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    kopf.run(
        standalone=standalone,
        peering_name=None if standalone else peering_name,
        clusterwide=namespace is None,
        namespaces=[namespace] if namespace else (),
        liveness_endpoint=liveness_endpoint,
    )

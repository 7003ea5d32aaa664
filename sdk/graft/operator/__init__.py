"""The FineTuneJob operator: `kubectl apply` a FineTuneJob, get a PyTorchJob/RayJob/TrainJob.

`run()` is what `graft operator` (and `python -m graft.operator`, the same command) calls. kopf,
the kubernetes client and prometheus_client are imported only when it runs, so `import graft`
stays fast.
"""

from __future__ import annotations

from graft.spec.contracts import PEERING_NAME


def run(
    namespace: str | None = None,
    *,
    standalone: bool = False,
    peering_name: str = PEERING_NAME,
    liveness_endpoint: str | None = None,
    metrics_port: int | None = None,
    verbose: bool = False,
) -> None:
    """Run the operator until SIGINT/SIGTERM.

    Watches one namespace, or the whole cluster when `namespace` is None. Unless `standalone`,
    kopf peering (the ClusterKopfPeering/KopfPeering object `peering_name`) keeps exactly one
    instance active, so several replicas can run for availability. With `metrics_port`, every
    replica serves Prometheus metrics at /metrics on that port (standbys report no reconciles).
    """
    import logging

    import kopf

    import graft.operator.handlers  # noqa: F401  (registers the handlers with kopf)

    if metrics_port is not None:
        from prometheus_client import start_http_server

        start_http_server(metrics_port)
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    kopf.run(
        standalone=standalone,
        peering_name=None if standalone else peering_name,
        clusterwide=namespace is None,
        namespaces=[namespace] if namespace else (),
        liveness_endpoint=liveness_endpoint,
    )

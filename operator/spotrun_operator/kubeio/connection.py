"""The operator's API client: its credentials (in-cluster or a kubeconfig), how many
connections it keeps, the user agent that names it, and the metrics each request feeds."""

from __future__ import annotations

import os
from typing import Any

from kubernetes import client, config

from spotrun_operator import __version__
from spotrun_operator.telemetry.client_metrics import ClientMetrics, MeasuredApiClient

USER_AGENT = f"spotrun-operator/{__version__}"


def load_api_client(
    kubeconfig: str | None = None,
    connections: int | None = None,
    measured: ClientMetrics | None = None,
) -> client.ApiClient:
    """In-cluster credentials when running in a pod, else the kubeconfig (KUBECONFIG).

    ``connections``: how many threads call the API at once. The client keeps that many
    connections open (its default is 5 per CPU): a thread finding none free opens, and
    throws away, a connection of its own, a TLS handshake per request. ``measured``:
    where each request's latency and answer are counted (client_metrics)."""
    cfg = client.Configuration()
    loader: Any = config  # partly untyped across client versions
    if kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
        loader.load_incluster_config(client_configuration=cfg)
    else:
        loader.load_kube_config(config_file=kubeconfig, client_configuration=cfg)
    if connections is not None:
        cfg.connection_pool_maxsize = max(cfg.connection_pool_maxsize, connections)
    api = (
        client.ApiClient(configuration=cfg)
        if measured is None
        else MeasuredApiClient(cfg, measured)
    )
    # Names the operator in audit logs and apiserver metrics (kopf's own calls say "kopf/").
    api.user_agent = USER_AGENT
    return api

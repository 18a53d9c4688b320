"""How every part that talks to the Kubernetes API finds it: the operator and the registry
source alike."""

from __future__ import annotations

import os
from pathlib import Path

import kubernetes_asyncio.client as k8s
from kubernetes_asyncio import config as k8s_config
from kubernetes_asyncio.config.config_exception import ConfigException


async def load_configuration() -> k8s.Configuration:
    """In a pod, the service account; elsewhere the kubeconfig (`KUBECONFIG` or ~/.kube)."""
    configuration = k8s.Configuration()
    try:
        k8s_config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    except ConfigException:
        # Read now, not at import: kubectl's own variable, which tests and tools set late.
        kubeconfig = os.environ.get("KUBECONFIG") or str(Path.home() / ".kube" / "config")
        await k8s_config.load_kube_config(
            config_file=kubeconfig, client_configuration=configuration
        )
    return configuration

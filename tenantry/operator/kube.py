"""The one thin place where the operator talks to the Kubernetes API.

Objects are plain JSON dicts, changes are JSON merge patches (RFC 7386), and every write
carries the operator's one field manager name. kubernetes-asyncio supplies the connection
(kubeconfig or in-cluster service account, TLS, tokens); nothing here knows about tenants.
"""

from __future__ import annotations

import time
from typing import Any

import aiohttp
from kubernetes_asyncio import client as k8s
from kubernetes_asyncio.client.exceptions import ApiException

from tenantry.kubeconfig import load_configuration
from tenantry.operator import metrics

MERGE_PATCH = "application/merge-patch+json"


class KubeError(RuntimeError):
    """A call the API server refused or could not answer; the message names the call."""

    def __init__(self, verb: str, path: str, status: int | None, reason: str) -> None:
        self.status = status
        super().__init__(f"{verb} {path}: {status or 'no response'} {reason}".strip())


class ConflictError(KubeError):
    """The object already exists (409 on create)."""


def core_path(resource: str, namespace: str, name: str | None = None) -> str:
    path = f"/api/v1/namespaces/{namespace}/{resource}"
    return f"{path}/{name}" if name else path


def hpa_path(namespace: str, name: str | None = None) -> str:
    path = f"/apis/autoscaling/v2/namespaces/{namespace}/horizontalpodautoscalers"
    return f"{path}/{name}" if name else path


def custom_path(plural: str, namespace: str, name: str, *, status: bool = False) -> str:
    path = f"/apis/tenantry.io/v1alpha1/namespaces/{namespace}/{plural}/{name}"
    return f"{path}/status" if status else path


class KubeClient:
    """JSON in, JSON out: GET, POST, merge PATCH and DELETE on an API path."""

    def __init__(self, api_client: k8s.ApiClient, field_manager: str) -> None:
        self._api = api_client
        self._field_manager = field_manager

    @classmethod
    async def connect(cls, field_manager: str, user_agent: str | None = None) -> KubeClient:
        """A client for the cluster this process runs in or its kubeconfig points at; the user
        agent (default: the field manager) tells its calls apart in audit logs."""
        api_client = k8s.ApiClient(await load_configuration())
        api_client.user_agent = user_agent or field_manager
        return cls(api_client, field_manager)

    async def close(self) -> None:
        await self._api.close()

    async def get(self, path: str) -> dict[str, Any] | None:
        """The object, or None when it does not exist."""
        try:
            return await self._call("GET", path)
        except KubeError as error:
            if error.status == 404:
                return None
            raise

    async def create(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return await self._call("POST", path, body, writes=True)

    async def patch(self, path: str, patch: dict[str, Any]) -> dict[str, Any] | None:
        """Apply a merge patch; None when the object does not exist (any more)."""
        try:
            return await self._call("PATCH", path, patch, writes=True)
        except KubeError as error:
            if error.status == 404:
                return None
            raise

    async def delete(self, path: str) -> bool:
        """True when something was deleted, False when it was already gone."""
        try:
            await self._call("DELETE", path, writes=True)
        except KubeError as error:
            if error.status == 404:
                return False
            raise
        return True

    async def _call(
        self, verb: str, path: str, body: dict[str, Any] | None = None, *, writes: bool = False
    ) -> dict[str, Any]:
        query = [("fieldManager", self._field_manager)] if writes and verb != "DELETE" else []
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = MERGE_PATCH if verb == "PATCH" else "application/json"
        started = time.perf_counter()
        try:
            result = await self._api.call_api(
                path,
                verb,
                query_params=query,
                header_params=headers,
                body=body,
                response_types_map={200: "object", 201: "object", 202: "object"},
                auth_settings=["BearerToken"],
                _return_http_data_only=True,
            )
        except ApiException as error:
            metrics.API_CALLS.labels(verb=verb, outcome=str(error.status)).inc()
            kind = ConflictError if error.status == 409 and verb == "POST" else KubeError
            raise kind(verb, path, error.status, str(error.reason or "")) from error
        except (OSError, aiohttp.ClientError, TimeoutError) as error:  # unreachable: retried
            metrics.API_CALLS.labels(verb=verb, outcome="unreachable").inc()
            raise KubeError(verb, path, None, str(error)) from error
        finally:
            metrics.API_SECONDS.labels(verb=verb).observe(time.perf_counter() - started)
        metrics.API_CALLS.labels(verb=verb, outcome="ok").inc()
        return result if isinstance(result, dict) else {}

"""The Tenantry operator: ApiTenant, RateLimitPolicy and ApiPlatform in; key Secrets, the
registry, HorizontalPodAutoscalers and status out.

- `desired` holds what should exist, as pure functions of what is (no I/O);
- `kube` is the one thin place that talks to the Kubernetes API;
- `reconcile` reads what is, asks `desired`, and writes the difference through `kube`;
- `handlers` tells Kopf what to react to, a few lines per handler;
- `run` starts Kopf for `tenantry operator`.
"""

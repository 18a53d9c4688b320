"""The worker: Celery tasks that run tenants' jobs, flush usage and keep house.

The job lifecycle lives in `execution` (async, independent of Celery) so that the Celery
worker, `tenantry dev` and the tests all run the same code; `celery_app` only adapts it.
"""

"""Jobs, as the API and the worker both see them: the service that submits, lists and cancels
them (PostgreSQL is their source of truth), the kinds and their payloads, the messages on the
broker. The worker (`tenantry.worker`) runs them; the API (`tenantry.api.jobs`) serves them.
"""

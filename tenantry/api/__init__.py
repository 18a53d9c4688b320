"""The API service: FastAPI app, authentication, limiter, consumer routes, probes, metrics."""

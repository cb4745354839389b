"""Prometheus metrics for the service: API requests, the job fleet, running jobs and tenants.

``metrics.py`` holds the metric definitions (one registry per app, so several apps can live in one
process); ``http.py`` the request middleware and the ``/metrics`` route.
"""

"""tuneforge control plane: REST API v1, persistence, executors and the CLI."""

__version__ = "0.1.0"

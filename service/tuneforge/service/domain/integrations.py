"""A job's ``integrations``: checked against what the deployment allows, tracking servers filled in.

The trainer sends metrics wherever the JobSpec says, from inside the cluster: an MLflow ``tracking_uri`` must be
the deployment's default (``TUNEFORGE_MLFLOW_TRACKING_URI``) or one it lists
(``TUNEFORGE_MLFLOW_ALLOWED_TRACKING_URIS``), or a request could make trainers call any address.
"""

from __future__ import annotations

from tuneforge.contracts.integrations import MlflowIntegration, WandbIntegration
from tuneforge.service.core.config import ServiceSettings
from tuneforge.service.core.errors import InvalidRequest

Integration = WandbIntegration | MlflowIntegration


def _same(a: str, b: str) -> bool:
    return a.rstrip("/") == b.rstrip("/")


def resolve_integrations(requested: list[Integration], settings: ServiceSettings) -> list[Integration]:
    out: list[Integration] = []
    default = settings.integrations.mlflow_tracking_uri
    allowed = [default, *settings.integrations.mlflow_allowed_tracking_uris]
    for i, item in enumerate(requested):
        if isinstance(item, MlflowIntegration):
            uri = item.mlflow.tracking_uri or default
            param = f"integrations.{i}.mlflow.tracking_uri"
            if not uri:
                raise InvalidRequest("This deployment has no MLflow tracking server (TUNEFORGE_MLFLOW_TRACKING_URI); "
                                     "name one in 'tracking_uri' that it allows", param=param)
            if not any(a and _same(uri, a) for a in allowed):
                raise InvalidRequest(f"MLflow tracking server {uri[:200]!r} is not allowed here; allowed: "
                                     f"{', '.join(a for a in allowed if a) or 'none'}", param=param)
            item = item.model_copy(update={"mlflow": item.mlflow.model_copy(update={"tracking_uri": uri})})
        out.append(item)
    return out

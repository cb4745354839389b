"""Contracts shared by the service, the operator and the trainer.

Importable without torch, FastAPI or kubernetes: pydantic models and constants only.
"""

from tuneforge.contracts.exit_codes import ExitCode
from tuneforge.contracts.jobspec import JOBSPEC_VERSION, AdapterSpec, DatasetRef, JobSpec, ResourceSpec

__all__ = ["JOBSPEC_VERSION", "AdapterSpec", "DatasetRef", "ExitCode", "JobSpec", "ResourceSpec"]

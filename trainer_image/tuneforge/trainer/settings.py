"""The trainer's settings: ``TUNEFORGE_*`` environment variables (pydantic-settings), read once per process.

The executors set some of them for the trainer (the local executor: model cache and work directory; the
operator: the progress token from its Secret), so their names are part of the contract with them.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import AliasChoices, Field

from tuneforge.contracts.settings import EnvSettings


class TrainerSettings(EnvSettings):
    jobspec: str = Field("", description="the JobSpec, a path or the JSON itself (or --spec)")
    progress_token: str = Field("", description="the per-job progress token when the JobSpec has none "
                                "(cluster mode: from the job's Secret)")
    model_cache: Path = Field(Path.home() / ".cache" / "tuneforge" / "models",
                              description="converted and downloaded base models",
                              json_schema_extra={"default_text": "~/.cache/tuneforge/models"})
    workdir: str = Field("", description="scratch space (empty: a temporary directory)")
    keep_workdir: bool = Field(False, description="keep the scratch space after the job (debugging)")
    skip_baseline_eval: bool = Field(False, description="skip evaluating the base model at step 0")
    padding_free: bool | None = Field(None, description="force padding-free batches on or off "
                                      "(unset: on with CUDA for supervised jobs)")
    group_by_length: bool | None = Field(None, description="force grouping examples by length on or off")
    trainer_metrics_port: int | None = Field(None, ge=0, le=65535, description="serve Prometheus "
                                             "metrics on this port (unset: no endpoint)")
    trainer_metrics_addr: str = Field("127.0.0.1", description="address of the metrics endpoint")
    exit_code_file: str = Field("", description="where rank 0 of a multi-GPU launch leaves its exit code "
                                "for the launcher (set by the trainer itself)")
    liger: bool | None = Field(None, description="Liger's fused kernels on CUDA: unset uses them when installed, "
                               "false turns them off (benchmarks measure each option)")
    torch_compile: bool = Field(False, description="compile the model with torch.compile (benchmarks)")
    gguf_converter: str = Field("", description="Directory of llama.cpp's convert_hf_to_gguf.py, for GGUF exports "
                                "(infra/engines/gguf/install.sh prints it; empty: GGUF export unavailable)")
    hf_hub_offline: bool = Field(False, validation_alias=AliasChoices("HF_HUB_OFFLINE"),
                                 description="Never download from the Hugging Face Hub (HF's own variable)")


@lru_cache(maxsize=1)
def trainer_settings() -> TrainerSettings:
    return TrainerSettings()

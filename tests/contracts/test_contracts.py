"""The shared contracts on their own: defaults and resolution, the v1 JobSpec reader, settings from the
environment vs explicit, and the generated documents (CRD, README tables) staying in step with the models."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import TypeAdapter, ValidationError

from tuneforge.contracts.hyperparameters import DpoHyperparameters, ReinforcementHyperparameters
from tuneforge.contracts.jobspec import JOBSPEC_VERSION, JobSpec
from tuneforge.contracts.methods import Method
from tuneforge.contracts.settings import explicit, markdown_table
from tuneforge.contracts.validation import describe, public_path
from tuneforge.service.core.config import ServiceSettings

ROOT = Path(__file__).resolve().parents[2]
METHOD: TypeAdapter[object] = TypeAdapter(Method)


def _spec(method: dict[str, object], rows: int = 100, adapter: str = "lora") -> JobSpec:
    return JobSpec.model_validate({
        "version": JOBSPEC_VERSION, "job_id": "ftjob-x", "tenant_id": "t", "method": method, "base_model": "m",
        "training_file": {"file_id": "f", "key": "files/f", "format": "chat", "rows": rows},
        "adapter": {"type": adapter}, "storage_url": "file:///tmp/s", "output_prefix": "jobs/ftjob-x"})


def test_auto_is_resolved_from_the_data_and_the_adapter() -> None:
    hp = _spec({"type": "supervised"}, rows=100).hyperparameters
    assert (hp.batch_size, hp.n_epochs) == (6, 10)  # 100 rows: batches of 6, ~200 steps capped at 10 epochs
    assert hp.learning_rate == pytest.approx(2e-4) and hp.learning_rate_multiplier == 1.0
    assert hp.checkpoint_every_steps == max(10, 17 * 10 // 5)
    assert hp.gradient_checkpointing == "auto"  # the trainer's to decide, per device
    large = _spec({"type": "supervised"}, rows=5000).hyperparameters
    assert (large.batch_size, large.n_epochs) == (8, 1)


def test_method_defaults_live_in_the_method_models() -> None:
    dpo = _spec({"type": "dpo"}, rows=100, adapter="full").hyperparameters
    assert isinstance(dpo, DpoHyperparameters)
    assert dpo.beta == 0.1 and dpo.loss_type == "sigmoid" and dpo.learning_rate == pytest.approx(5e-6)
    assert dpo.n_epochs == 1  # preference methods: one pass from 64 rows
    rl = _spec({"type": "reinforcement", "reinforcement": {"grader": {"type": "string_check"}}}).hyperparameters
    assert isinstance(rl, ReinforcementHyperparameters)
    assert (rl.num_generations, rl.max_completion_length, rl.kl_coef) == (4, 256, 0.0)
    assert rl.learning_rate == pytest.approx(1e-5)  # 1e-6 base, x10 for LoRA


def test_explicit_values_win_and_resolution_is_idempotent() -> None:
    spec = _spec({"type": "supervised", "supervised": {"hyperparameters": {
        "n_epochs": 2, "batch_size": 4, "learning_rate_multiplier": 0.5}}})
    hp = spec.hyperparameters
    assert (hp.n_epochs, hp.batch_size, hp.learning_rate) == (2, 4, pytest.approx(1e-4))
    again = JobSpec.model_validate_json(spec.model_dump_json())
    assert again == spec


@pytest.mark.parametrize("method,where", [
    ({"type": "dpo", "dpo": {"hyperparameters": {"loss_type": "magic"}}}, "dpo.hyperparameters.loss_type"),
    ({"type": "reinforcement", "reinforcement": {"algorithm": "a2c", "grader": {"type": "string_check"}}},
     "reinforcement.algorithm"),
    ({"type": "supervised", "supervised": {"hyperparameters": {"reasoning_effort": "low"}}},
     "supervised.hyperparameters.reasoning_effort"),
    ({"type": "supervised", "supervised": {"hyperparameters": {"batch_size": True}}},
     "supervised.hyperparameters.batch_size"),
    ({"type": "reinforcement", "reinforcement": {}}, "reinforcement.grader"),
])
def test_what_the_trainer_would_refuse_is_refused_by_the_contract(method: dict[str, object], where: str) -> None:
    with pytest.raises(ValidationError) as exc:
        METHOD.validate_python(method)
    assert describe(exc.value.errors(), method)[0]["param"] == where


def test_public_path_drops_union_tags_and_member_labels() -> None:
    body = {"method": {"type": "dpo", "dpo": {"hyperparameters": {"beta": 0}}}}
    loc = ("body", "method", "dpo", "dpo", "hyperparameters", "beta", "constrained-float")
    assert public_path(loc, body) == "method.dpo.hyperparameters.beta"


def test_a_version_1_jobspec_is_read() -> None:
    v1 = {"version": "tuneforge.dev/v1", "job_id": "j", "tenant_id": "t",
          "method": {"type": "reinforcement", "algorithm": "rloo", "grader": {
              "type": "regex", "reference_field": None, "operation": "eq", "pattern": "####", "reference_pattern": None,
              "model_prefix": None, "graders": None, "calculate_output": None}},
          "base_model": "m", "training_file": {"file_id": "f", "key": "files/f", "format": "prompt_only", "rows": 8},
          "hyperparameters": {"n_epochs": 1, "batch_size": 2, "learning_rate": 1e-4, "max_steps": -1, "beta": None,
                              "kl_coef": 0.05, "num_generations": 2, "gradient_checkpointing": None},
          "storage_url": "file:///s", "output_prefix": "jobs/j"}
    spec = JobSpec.model_validate(v1)
    assert spec.version == JOBSPEC_VERSION and spec.method.algorithm == "rloo"
    assert spec.method.grader is not None and spec.method.grader.type == "regex"
    assert spec.hyperparameters.max_steps is None and spec.hyperparameters.gradient_checkpointing == "auto"


def test_settings_come_from_the_environment_unless_built_explicitly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TUNEFORGE_EXECUTOR", "kubernetes")
    monkeypatch.setenv("TUNEFORGE_PORT", "9123")
    monkeypatch.setenv("TUNEFORGE_MAX_ACTIVE_JOBS", "7")
    from_env = ServiceSettings(home=Path("/tmp/tf-home"))
    assert (from_env.executor.kind, from_env.server.port, from_env.limits.max_active_jobs_per_tenant) == (
        "kubernetes", 9123, 7)
    assert from_env.database_url == "sqlite:////tmp/tf-home/tuneforge.db"
    built = explicit(ServiceSettings, home=Path("/tmp/tf-home"))
    assert (built.executor.kind, built.server.port, built.limits.max_active_jobs_per_tenant) == ("local", 8000, 20)
    with pytest.raises(ValidationError):
        built.server.port = 1  # type: ignore[misc]  # frozen: nothing changes settings while serving


def test_every_service_setting_is_documented() -> None:
    table = markdown_table(ServiceSettings)
    for line in table.splitlines()[2:]:
        assert line.split("|")[3].strip(), f"no description: {line}"
    assert "`TUNEFORGE_EXECUTOR`" in table and "`TUNEFORGE_KUBE_QUEUE`" in table


def test_readme_configuration_tables_are_generated() -> None:
    result = subprocess.run([sys.executable, str(ROOT / "docs" / "configuration.py"), "--check"],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


def test_openapi_shows_the_method_union(tmp_path: Path) -> None:
    from tuneforge.service.api.app import create_app
    from tuneforge.service.core.config import ServiceSettings as Settings

    schema = create_app(explicit(Settings, home=tmp_path / "home"), start_executor=False).openapi()
    text = json.dumps(schema)
    for name in ("SupervisedHyperparameters", "DpoHyperparameters", "ReinforcementHyperparameters",
                 "RewardModelHyperparameters", "MultiGrader", "StringCheckGrader"):
        assert name in schema["components"]["schemas"], name
    assert '"propertyName": "type"' in text  # discriminated on method.type and grader.type

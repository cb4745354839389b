"""``resources.gpus > 1``: the trainer relaunches itself under torchrun (pure plan), and 2 CPU workers on gloo
really train the tiny model (DDP; FSDP needs CUDA and is skipped here)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.trainer.trainer_helpers import chat_rows, run_trainer
from tuneforge.contracts.jobspec import JobSpec
from tuneforge.trainer.launch import distributed_training_args, is_main_process, launch_plan, world


def _spec(gpus: int, nodes: int = 1) -> JobSpec:
    return JobSpec.model_validate({
        "job_id": "ftjob-l", "tenant_id": "t", "method": {"type": "supervised"}, "base_model": "/m",
        "training_file": {"file_id": "f", "key": "files/f", "format": "chat", "rows": 8},
        "hyperparameters": {"n_epochs": 1, "batch_size": 4, "learning_rate": 1e-3, "max_length": 64},
        "resources": {"gpus": gpus, "nodes": nodes},
        "storage_url": "file:///tmp/s", "output_prefix": "jobs/ftjob-l", "seed": 1,
    })  # fmt: skip


@pytest.mark.parametrize("gpus", [0, 1])
def test_one_gpu_or_none_runs_in_process(gpus: int) -> None:
    assert launch_plan(_spec(gpus), "/spec.json", python="py", env={}, cuda=True) is None


def test_multi_gpu_launches_torchrun_with_fsdp() -> None:
    plan = launch_plan(_spec(4), "/spec.json", python="/py", env={}, cuda=True)
    assert plan is not None and plan.nproc == 4
    assert plan.command == ["/py", "-m", "torch.distributed.run", "--nproc-per-node=4", "--nnodes=1",
                            "--standalone", "-m", "tuneforge.trainer"]  # fmt: skip
    assert plan.env["TUNEFORGE_JOBSPEC"] == "/spec.json" and plan.env["TUNEFORGE_DISTRIBUTED"] == "fsdp"
    assert int(plan.env["OMP_NUM_THREADS"]) >= 1


def test_workers_never_launch_again_and_cpu_uses_ddp() -> None:
    assert launch_plan(_spec(2), "{}", python="py", env={"WORLD_SIZE": "2", "LOCAL_RANK": "1"}, cuda=True) is None
    plan = launch_plan(_spec(2), "{}", python="py", env={}, cuda=False)
    assert plan is not None and plan.env["TUNEFORGE_DISTRIBUTED"] == "ddp"


def test_multi_node_needs_a_rendezvous_endpoint() -> None:
    with pytest.raises(ValueError, match="TUNEFORGE_RDZV_ENDPOINT"):
        launch_plan(_spec(8, nodes=2), "/s", python="py", env={}, cuda=True)
    env = {"TUNEFORGE_RDZV_ENDPOINT": "node0:29400", "TUNEFORGE_NODE_RANK": "1"}
    plan = launch_plan(_spec(8, nodes=2), "/s", python="py", env=env, cuda=True)
    assert plan is not None and plan.nproc == 16
    assert "--node-rank=1" in plan.command and "--rdzv-endpoint=node0:29400" in plan.command
    assert "--standalone" not in plan.command


def test_training_arguments_per_strategy() -> None:
    assert distributed_training_args({}, cuda=True) == {}
    fsdp = distributed_training_args({"WORLD_SIZE": "2", "TUNEFORGE_DISTRIBUTED": "fsdp"}, cuda=True)
    assert fsdp["fsdp"] == "full_shard auto_wrap" and fsdp["ddp_backend"] == "nccl"
    assert fsdp["fsdp_config"]["use_orig_params"] is True
    ddp = distributed_training_args({"WORLD_SIZE": "2", "TUNEFORGE_DISTRIBUTED": "ddp"}, cuda=False)
    assert ddp["ddp_backend"] == "gloo" and "fsdp" not in ddp
    assert world({"RANK": "1", "WORLD_SIZE": "2"}) == (1, 2) and not is_main_process({"RANK": "1"})


@pytest.mark.slow
def test_two_cpu_workers_train_with_gloo(make_job: Any) -> None:
    """The same JobSpec with resources.gpus=2 on CPU: torchrun starts 2 gloo/DDP workers; rank 0 reports."""
    job = make_job(chat_rows(16), validation=chat_rows(4, seed=1),
                   hyperparameters={"max_steps": 3, "batch_size": 2, "checkpoint_every_steps": 3},
                   resources={"gpus": 2})  # fmt: skip
    result = run_trainer(job, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "launching 2 workers" in result.stderr
    steps = [e["data"]["step"] for e in result.of("metrics") if "train_loss" in e["data"]]
    assert steps == [1, 2, 3], "rank 0 alone reports (no duplicated events)"
    (res,) = result.of("result")
    assert "adapter_model.safetensors" in res["data"]["files"]
    assert len(result.of("checkpoint")) == 1
    manifest = json.loads((job.job_dir / "model" / "manifest.json").read_text())
    assert manifest["files"]


@pytest.mark.gpu
def test_fsdp_on_two_gpus(make_job: Any) -> None:
    import torch

    if torch.cuda.device_count() < 2:
        pytest.skip("FSDP needs 2 CUDA GPUs (NCCL); on CPU the gloo/DDP test covers the launch path")
    job = make_job(chat_rows(16), hyperparameters={"max_steps": 2, "batch_size": 2}, resources={"gpus": 2})
    result = run_trainer(job, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    assert len(result.of("result")) == 1


@pytest.mark.slow
def test_worker_exit_code_survives_torchrun(make_job: Any) -> None:
    """torchrun reports any worker failure as 1; the launcher returns rank 0's contract code (65 here)."""
    job = make_job(chat_rows(8), method={"type": "dpo"}, fmt="preference", resources={"gpus": 2})
    result = run_trainer(job, timeout=300)
    assert result.returncode == 65, result.stderr[-3000:]
    errors = result.of("error")
    assert len(errors) == 1 and errors[0]["data"]["code"] == "invalid_input", errors

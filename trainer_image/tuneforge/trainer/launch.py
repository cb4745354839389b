"""Multi-process launch: ``resources.gpus > 1`` re-runs the trainer under ``torch.distributed.run`` (torchrun).

The same JobSpec works on 1 or N GPUs: the entry point (``python -m tuneforge.trainer``) computes a
:class:`LaunchPlan` with :func:`launch_plan`; when there is one it starts torchrun with the same spec and waits,
and each worker (``RANK``/``WORLD_SIZE`` set by torchrun) trains one shard of every batch. On CUDA the workers
shard the model with FSDP (``TUNEFORGE_DISTRIBUTED=fsdp``, NCCL); ``TUNEFORGE_DISTRIBUTED=ddp`` (the CPU/gloo
path used by the tests) replicates it instead. Rank 0 alone reports progress and writes to the object store.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tuneforge.contracts.jobspec import JobSpec

#: env var the workers read to pick the data-parallel strategy ("fsdp" or "ddp")
STRATEGY_ENV = "TUNEFORGE_DISTRIBUTED"
#: set by torchrun in every worker; its presence means "already launched" (never launch twice)
WORKER_ENV = ("WORLD_SIZE", "LOCAL_RANK")


@dataclass(frozen=True)
class LaunchPlan:
    command: list[str]
    #: variables to add to the current environment
    env: dict[str, str] = field(default_factory=dict)
    nproc: int = 1


def world(env: Mapping[str, str] | None = None) -> tuple[int, int]:
    """(rank, world size) of this process: (0, 1) outside a distributed launch."""
    env = os.environ if env is None else env
    return int(env.get("RANK", "0") or 0), int(env.get("WORLD_SIZE", "1") or 1)


def is_main_process(env: Mapping[str, str] | None = None) -> bool:
    return world(env)[0] == 0


def launch_plan(
    spec: JobSpec,
    spec_source: str,
    *,
    python: str,
    env: Mapping[str, str],
    cuda: bool,
) -> LaunchPlan | None:
    """The torchrun command and environment for ``spec``, or None when it runs in this process.

    ``spec_source`` is what the entry point was given (a path or inline JSON); workers get it through
    ``TUNEFORGE_JOBSPEC`` so an inline spec never appears in ``ps``. ``nodes > 1`` expects the rendezvous
    endpoint in ``TUNEFORGE_RDZV_ENDPOINT`` (host:port, set by the operator) and ``TUNEFORGE_NODE_RANK``.
    """
    gpus = int(spec.resources.gpus)
    nodes = max(1, int(spec.resources.nodes))
    if gpus <= 1 and nodes <= 1:
        return None
    if any(k in env for k in WORKER_ENV):
        return None  # we are a worker already
    strategy = env.get(STRATEGY_ENV) or ("fsdp" if cuda else "ddp")
    if strategy not in ("fsdp", "ddp"):
        raise ValueError(f"{STRATEGY_ENV} must be 'fsdp' or 'ddp', not {strategy!r}")
    nproc = max(1, gpus)
    command = [python, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}", f"--nnodes={nodes}"]
    if nodes == 1:
        command.append("--standalone")
    else:
        endpoint = env.get("TUNEFORGE_RDZV_ENDPOINT")
        if not endpoint:
            raise ValueError("a multi-node job needs TUNEFORGE_RDZV_ENDPOINT (host:port of node 0)")
        command += [
            f"--node-rank={env.get('TUNEFORGE_NODE_RANK', '0')}",
            "--rdzv-backend=c10d",
            f"--rdzv-endpoint={endpoint}",
            f"--rdzv-id={spec.job_id}",
        ]
    command += ["-m", "tuneforge.trainer"]
    threads = max(1, (os.cpu_count() or 1) // nproc)
    out_env = {
        "TUNEFORGE_JOBSPEC": spec_source,
        STRATEGY_ENV: strategy,
        "OMP_NUM_THREADS": env.get("OMP_NUM_THREADS", str(threads)),
    }
    return LaunchPlan(command=command, env=out_env, nproc=nproc * nodes)


def distributed_training_args(env: Mapping[str, str] | None = None, *, cuda: bool) -> dict[str, Any]:
    """Extra ``TrainingArguments`` for a worker of a distributed launch ({} in a single process)."""
    env = os.environ if env is None else env
    _, size = world(env)
    if size <= 1:
        return {}
    strategy = env.get(STRATEGY_ENV, "fsdp" if cuda else "ddp")
    kwargs: dict[str, Any] = {"ddp_backend": "nccl" if cuda else "gloo", "ddp_find_unused_parameters": False}
    if strategy == "fsdp":
        kwargs["fsdp"] = "full_shard auto_wrap"
        # the decoder-layer class comes from the model's _no_split_modules; use_orig_params keeps LoRA's
        # frozen and trainable parameters in the same flat groups
        kwargs["fsdp_config"] = {"use_orig_params": True, "sync_module_states": True,
                                 "state_dict_type": "FULL_STATE_DICT"}  # fmt: skip
    return kwargs

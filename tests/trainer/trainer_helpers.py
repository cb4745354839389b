"""Helpers for trainer tests: data rows, job specs in a local store, running the trainer CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
PYTHONPATH = os.pathsep.join(str(REPO / p) for p in ("service", "operator", "trainer_image"))


def chat_rows(n: int, seed: int = 0) -> list[dict[str, Any]]:
    import random

    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b = rng.randint(1, 30), rng.randint(1, 30)
        rows.append(
            {
                "messages": [
                    {"role": "user", "content": f"What is {a} plus {b}?"},
                    {"role": "assistant", "content": f"{a} plus {b} is {a + b}."},
                ]
            }
        )
    return rows


@dataclass
class Job:
    root: Path
    store_dir: Path
    spec_path: Path
    spec: dict[str, Any]

    @property
    def job_dir(self) -> Path:
        return self.store_dir / self.spec["output_prefix"]


def write_jsonl(path: Path, rows: list[Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))


@dataclass
class Result:
    returncode: int
    events: list[dict[str, Any]]
    stderr: str

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["kind"] == kind]


def trainer_env(tmp: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        PYTHONPATH=PYTHONPATH,
        HF_HUB_OFFLINE="1",
        TUNEFORGE_MODEL_CACHE=str(tmp / "model-cache"),
        TUNEFORGE_WORKDIR=str(tmp / "work"),
        OMP_NUM_THREADS=env.get("OMP_NUM_THREADS", "2"),
    )
    return env


def start_trainer(job: Job) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tuneforge.trainer", "--spec", str(job.spec_path)],
        env=trainer_env(job.root),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def parse_events(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def run_trainer(job: Job, timeout: float = 300) -> Result:
    proc = start_trainer(job)
    out, err = proc.communicate(timeout=timeout)
    return Result(proc.returncode, parse_events(out), err)


def preference_rows(n: int, seed: int = 0, openai_format: bool = False) -> list[dict[str, Any]]:
    import random

    rng = random.Random(seed)
    rows: list[dict[str, Any]] = []
    for _ in range(n):
        a, b = rng.randint(1, 30), rng.randint(1, 30)
        prompt = f"What is {a} plus {b}?"
        good, bad = f"It is {a + b}.", f"It is {a + b + rng.randint(1, 9)}."
        if openai_format:
            rows.append(
                {
                    "input": {"messages": [{"role": "user", "content": prompt}]},
                    "preferred_output": [{"role": "assistant", "content": good}],
                    "non_preferred_output": [{"role": "assistant", "content": bad}],
                }
            )
        else:
            rows.append({"prompt": prompt, "chosen": good, "rejected": bad})
    return rows


def prompt_rows(n: int, seed: int = 0) -> list[dict[str, Any]]:
    import random

    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b = rng.randint(1, 9), rng.randint(1, 9)
        rows.append({"prompt": f"{a}+{b}=", "answer": f"#### {a + b}"})
    return rows

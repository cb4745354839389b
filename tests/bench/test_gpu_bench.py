"""The prepared GPU run (bench/gpu/): its CPU dry run end to end, its budgets and its bookkeeping.

The dry run is the same command as on the GPU machine (``bash bench/gpu/run.sh``) at tiny sizes, so a change
that would break the GPU run breaks here first. The other tests are fast: no model, no torch.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from bench.gpu.envcheck import canonical, read_pins
from bench.gpu.models import matmul_parameters, mean_attended_context, train_flops_per_token
from bench.gpu.plan import GPU_ONLY_OPTIONS, LLAMA_1B, SMOLLM2_135M, make_plan
from bench.gpu.results import read_results, summarize, write_result
from bench.gpu.training import StepClock

REPO = Path(__file__).resolve().parents[2]
SHARED_DATA = Path(os.environ.get("TUNEFORGE_SHARED_DATA", REPO.parent / "shared" / "data"))


def run_bench(*args: str, timeout: float, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(REPO / "bench" / "gpu" / "run.sh"), *args],
        cwd=REPO, env={**os.environ, "PYTHON": sys.executable, **(env or {})},
        capture_output=True, text=True, timeout=timeout,
    )


@pytest.fixture(scope="module")
def staged(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(data, tokenizer) as bench/gpu/stage.py lays them out for the GPU machine."""
    if not (SHARED_DATA / "gsm8k" / "train.jsonl").is_file():
        pytest.skip(f"shared data sets not found at {SHARED_DATA}")
    dest = tmp_path_factory.mktemp("gpu-bench-staged")
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "gpu" / "stage.py"), "--shared-data", str(SHARED_DATA),
                           "--dest", str(dest), "--gsm8k-rows", "300"],
                          capture_output=True, text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return dest / "data", dest / "tokenizer"


@pytest.mark.slow
def test_dry_run_exercises_every_check(tmp_path: Path, staged: tuple[Path, Path]) -> None:
    data, tokenizer = staged
    out, published = tmp_path / "out", tmp_path / "published"
    proc = run_bench("--dry-run", "--out", str(out), "--data", str(data), "--tokenizer", str(tokenizer),
                     timeout=1500, env={"OUT": str(published)})
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]

    plan = make_plan(dry_run=True)
    results = read_results(out)
    for unit in plan.units():
        for name in unit.items:
            assert (unit.check, name) in results, f"{unit.name} wrote no result {name}"
            record = results[(unit.check, name)]
            assert json.loads((out / "results" / unit.check / f"{name}.json").read_text()) == record
            if unit.check == "options" and name in GPU_ONLY_OPTIONS:
                assert record["status"] == "skipped" and record["reason"] == GPU_ONLY_OPTIONS[name]
            elif unit.check == "serving" and "-tuneforge-" in name:
                assert record["status"] == "skipped" and "tuneforge_engine" in record["reason"]
            else:
                assert record["status"] == "ok", record.get("error")

    for (check, name), r in results.items():
        if check in ("sft", "dpo") or (check == "options" and r["status"] == "ok"):
            size = plan.options_size if check == "options" else plan.train[check][r["model"]]
            assert r["steps"] == size.steps, (name, r["steps"])
            assert r["tokens"] > 0 and r["tokens_per_second"] > 0 and r["tokens_per_second_hf"] > 0, name
            assert len(r["step_clock"]) == size.steps and r["flops_per_token"] > 0, name
            assert r["mfu"] is None and r["peak_memory_bytes"] is None  # no GPU: neither is measured
        if check == "serving" and r["status"] == "ok":
            assert r["output_tokens"] == r["concurrency"] * plan.new_tokens * plan.serving_rounds
            assert r["output_tokens_per_second"] > 0
    # both sides trained the same rows: same token counts (TRL's and tuneforge's own counters)
    for method, configs in plan.train_configs.items():
        for model, adapter in configs:
            trl = results[(method, plan.train_item(method, model, adapter, "trl"))]
            ours = results[(method, plan.train_item(method, model, adapter, "tuneforge"))]
            assert trl["rows"] == ours["rows"] == plan.train[method][model].rows()
            assert abs(trl["tokens"] - ours["tokens"]) <= 0.02 * trl["tokens"], (method, model, adapter)

    summary = json.loads((out / "summary.json").read_text())
    assert {row["method"] for row in summary["train"]} == {"sft", "dpo"}
    assert all(row["tokens_per_second_ratio"] for row in summary["train"])
    assert [o["variant"] for o in summary["options"]] == ["plain", "padding_free", "gradient_checkpointing",
                                                          "liger", "torch_compile"]
    markdown = (out / "summary.md").read_text()
    for heading in ("## Training", "## The trainer's GPU options", "## Serving"):
        assert heading in markdown
    for name in ("results.jsonl", "summary.md", "summary.json", "run.log"):
        assert (published / name).read_text() == (out / name).read_text(), name


def test_a_unit_past_its_budget_is_killed_and_the_run_goes_on(tmp_path: Path) -> None:
    """Killed units leave 'timeout' results that say why; the next unit still runs; nothing measured is lost."""
    data, tokenizer = fake_inputs(tmp_path)
    out = tmp_path / "out"
    start = time.monotonic()
    proc = run_bench("--dry-run", "--out", str(out), "--data", str(data), "--tokenizer", str(tokenizer),
                     "--only", "device", "--unit-budget", "device=0.2", timeout=120)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert time.monotonic() - start < 60
    record = read_results(out)[("device", "device")]
    assert record["status"] == "timeout" and "budget of 0.2 s" in record["error"], record
    assert "device/device: timeout" in (out / "summary.md").read_text()


def test_an_exhausted_total_budget_starts_nothing_and_says_so(tmp_path: Path) -> None:
    data, tokenizer = fake_inputs(tmp_path)
    out = tmp_path / "out"
    proc = run_bench("--dry-run", "--out", str(out), "--data", str(data), "--tokenizer", str(tokenizer),
                     "--total-budget", "1", timeout=60)
    assert proc.returncode == 1
    results = read_results(out)
    expected = {(u.check, n) for u in make_plan(True).units() for n in u.items}
    assert set(results) == expected
    assert {r["status"] for r in results.values()} == {"not_run"}


@pytest.mark.parametrize("args,message", [
    (["--data", "/nonexistent"], "no /nonexistent/gsm8k/train.jsonl"),
    (["--unit-budget", "device"], "expected UNIT=SECONDS"),
    (["--unit-budget", "device=-3"], "expected UNIT=SECONDS"),
    (["--unit-budget", "nosuchunit=3"], "names no unit: nosuchunit"),
])
def test_bad_arguments_say_what_is_wrong(tmp_path: Path, args: list[str], message: str) -> None:
    data, tokenizer = fake_inputs(tmp_path)
    proc = run_bench("--dry-run", "--out", str(tmp_path / "out"), "--data", str(data), "--tokenizer", str(tokenizer),
                     *args, timeout=60)
    assert proc.returncode == 2
    assert message in proc.stderr, proc.stderr


def fake_inputs(tmp_path: Path) -> tuple[Path, Path]:
    """Inputs that pass the run's input check (the tests using them never get to read them)."""
    data, tokenizer = tmp_path / "data", tmp_path / "tokenizer"
    (data / "gsm8k").mkdir(parents=True)
    (data / "hh-rlhf").mkdir()
    (data / "gsm8k" / "train.jsonl").write_text("")
    (data / "hh-rlhf" / "harmless-base-test.jsonl.gz").write_bytes(b"")
    tokenizer.mkdir()
    (tokenizer / "tokenizer.json").write_text("{}")
    return data, tokenizer


def test_results_survive_a_line_cut_off_by_a_kill(tmp_path: Path) -> None:
    write_result(tmp_path, "sft", "a", {"tokens_per_second": 10.0})
    write_result(tmp_path, "sft", "a", {"tokens_per_second": 12.0})  # a later record of the same result wins
    with open(tmp_path / "results.jsonl", "a") as fh:
        fh.write('{"check": "sft", "name": "b", "sta')
    results = read_results(tmp_path)
    assert list(results) == [("sft", "a")] and results[("sft", "a")]["tokens_per_second"] == 12.0
    # a payload cannot overwrite the record's own keys
    write_result(tmp_path, "device", "device", {"name": "cpu", "check": "x"})
    assert ("device", "device") in read_results(tmp_path)
    summary = summarize(tmp_path, make_plan(False), {"dry_run": False, "elapsed_s": 1.0})
    assert summary["train"][0]["tokens_per_second_ratio"] is None  # one side only: no ratio, no crash


def test_steady_state_throughput_leaves_out_the_warm_up_steps() -> None:
    clock = StepClock()
    # step 1 is slow (warm-up); steps 2-4 take 1 s for 100 tokens each
    clock.points = [(1, 100, 10.0), (2, 200, 11.0), (3, 300, 12.0), (4, 400, 13.0)]
    assert clock.steady_tokens_per_second(warmup_steps=1) == pytest.approx(100.0)
    assert clock.steady_tokens_per_second(warmup_steps=9) == pytest.approx(100.0)  # too few steps: from the first
    clock.points = [(1, 100, 10.0)]
    assert clock.steady_tokens_per_second(warmup_steps=1) is None


def test_flops_per_token_follow_the_architecture() -> None:
    smol = {**SMOLLM2_135M, "vocab_size": 49152}
    # SmolLM2-135M has 134,515,008 parameters: all but its 61 RMSNorm weight vectors take part in products
    assert matmul_parameters(smol) == 134_515_008 - (2 * 30 + 1) * 576
    assert 1.0e9 < matmul_parameters({**LLAMA_1B, "vocab_size": 49152}) < 1.1e9
    n = matmul_parameters(smol)
    assert train_flops_per_token(smol, 0.0, method="sft", adapter="full") == 6 * n
    assert train_flops_per_token(smol, 0.0, method="sft", adapter="lora") == 4 * n
    assert train_flops_per_token(smol, 0.0, method="dpo", adapter="full") == 8 * n
    assert train_flops_per_token(smol, 100.0, method="sft", adapter="full") > 6 * n
    assert mean_attended_context([1, 3]) == pytest.approx((1 + 1 + 2 + 3) / 4)


def test_carried_wheels_are_the_versions_ci_tests() -> None:
    """bench/gpu/wheels.txt pins what .ci/requirements.lock installs, so the GPU run trains with the tested set."""
    lock = {}
    for line in (REPO / ".ci" / "requirements.lock").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==", 1)
            lock[canonical(name)] = version.split(";")[0].strip()
    pins = read_pins()
    assert "trl" in pins and "datasets" in pins and "pydantic" in pins
    for name, version in pins.items():
        if name in lock:
            assert version == lock[name], f"{name}: wheels.txt pins {version}, the lock has {lock[name]}"
        else:
            assert name == "liger-kernel", f"{name} is pinned for the GPU but not in the lock"

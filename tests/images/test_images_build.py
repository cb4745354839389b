"""Build each image with buildah on a local Debian base and run its component inside it (slow; cached).

An image whose inputs (Dockerfile, lock, copied source, build arguments, base) are unchanged is not rebuilt
(see tests/support/buildah.py). Inside: the trainer's ``--help`` and a one-step training run of a tiny random
Llama from a JobSpec; the service's ``tuneforge serve`` answering ``/healthz``; the operator's handlers import
and ``--help``; and in each, the user, the labels, and the absence of compilers, pip and other components'
packages."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.buildah import Buildah, BuildError, Built, Container, missing_tools
from tests.support.live_server import free_port
from tests.support.tiny_model import make_tiny_model

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(3600),  # a cold trainer build downloads and unpacks torch's CUDA wheels
    pytest.mark.skipif(bool(missing_tools()), reason=f"needs {', '.join(missing_tools())} (bash .ci/system-deps)"),
    pytest.mark.skipif(
        os.environ.get("TUNEFORGE_SKIP_IMAGE_BUILDS") == "1", reason="TUNEFORGE_SKIP_IMAGE_BUILDS=1 (a quick local run)"
    ),
]
UID = "10001"
#: importable in no image but the one named
NOT_IN = {
    # starlette and uvicorn are the CPU inference engine's HTTP server (the trainer image runs it too)
    "trainer": (
        "fastapi",
        "sqlalchemy",
        "kopf",
        "kubernetes",
        "moto",
        "pytest",
        "tuneforge.service",
    ),
    "service": ("torch", "transformers", "trl", "peft", "kopf", "pytest", "tuneforge.trainer"),
    "operator": ("torch", "transformers", "fastapi", "sqlalchemy", "pytest", "tuneforge.service", "tuneforge.trainer"),
}


@pytest.fixture(scope="module")
def buildah() -> Buildah:
    return Buildah()


@pytest.fixture(scope="module")
def logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("image-builds")


def _build(buildah: Buildah, name: str, logs: Path) -> Built:
    try:
        built = buildah.build(name, log=logs / f"{name}.log")
    except BuildError as exc:
        pytest.fail(str(exc))
    took = f"built in {built.seconds:.0f} s" if built.seconds else "cached"
    print(f"\n[images] {built.tag}: {built.size_bytes / 1e6:.0f} MB, {took}")
    return built


@pytest.fixture(scope="module")
def image(request: pytest.FixtureRequest, buildah: Buildah, logs: Path) -> Iterator[Container]:
    """A working container of the image named by the test's ``name`` parameter (built if needed)."""
    built = _build(buildah, request.param, logs)
    with buildah.container(built.tag) as container:
        yield container


def jobspec(job_id: str, base_model: str, store: str, rows: int) -> str:
    """The JobSpec JSON for a tiny supervised run, validated by the contract here before the image sees it."""
    from tuneforge.contracts.jobspec import JobSpec

    spec = JobSpec.model_validate(
        {
            "job_id": job_id,
            "tenant_id": "tenant-image",
            "method": {"type": "supervised"},
            "base_model": base_model,
            "training_file": {"file_id": "file-train", "key": "files/file-train", "format": "chat", "rows": rows},
            "hyperparameters": {
                "n_epochs": 1,
                "batch_size": 2,
                "learning_rate": 1e-3,
                "max_length": 64,
                "max_steps": 1,
            },
            "storage_url": store,
            "output_prefix": f"jobs/{job_id}",
            "seed": 7,
        }
    )
    return spec.model_dump_json()


def chat_rows(n: int) -> list[dict[str, Any]]:
    return [
        {
            "messages": [
                {"role": "user", "content": f"What is {i} plus {i}?"},
                {"role": "assistant", "content": f"{i} plus {i} is {2 * i}."},
            ]
        }
        for i in range(n)
    ]


@pytest.mark.parametrize("image", ["trainer", "service", "operator"], indirect=True)
def test_image_runs_as_its_user_without_compilers_pip_or_other_components(image: Container, request: Any) -> None:
    name = request.node.callspec.params["image"]
    config = image.image_config["config"]
    assert config["User"] == f"{UID}:{UID}"
    labels = config.get("Labels") or {}
    assert labels.get("org.opencontainers.image.title") == f"tuneforge-{name}", labels
    assert labels.get("org.opencontainers.image.version") and labels.get("org.opencontainers.image.base.name")
    probe = (
        "import importlib.util as u, os, shutil, sys\n"
        f"present = [m for m in {NOT_IN[name]!r} if u.find_spec(m) is not None]\n"
        "tools = [t for t in ('gcc', 'cc', 'g++', 'make', 'pip', 'pip3') if shutil.which(t)]\n"
        "caches = [p for p in ('/root/.cache/pip', os.path.expanduser('~/.cache/pip')) if os.path.exists(p)]\n"
        "print(os.getuid(), present, tools, caches)\n"
    )
    done = image.run(["python3", "-c", probe], timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split("\n")[0] == f"{UID} [] [] []", (
        f"uid, other components' modules, tools, caches: {done.stdout}"
    )


@pytest.mark.parametrize("image", ["trainer"], indirect=True)
def test_trainer_help(image: Container) -> None:
    done = image.run([*image.entrypoint, "--help"], timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "--spec" in done.stdout and "TUNEFORGE_JOBSPEC" in done.stdout


@pytest.mark.parametrize("image", ["trainer"], indirect=True)
def test_trainer_trains_a_tiny_model_from_a_jobspec(image: Container, tmp_path: Path) -> None:
    """One optimizer step on a tiny random Llama, the data and the model in a local store bind-mounted at /job;
    the tuned adapter and its manifest land in the store, as in a pod."""
    job = tmp_path / "job"
    model = make_tiny_model(job / "models")
    rows = chat_rows(8)
    (job / "store" / "files").mkdir(parents=True)
    (job / "store" / "files" / "file-train").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (job / "spec.json").write_text(jobspec("ftjob-image", f"/job/models/{model.name}", "file:///job/store", len(rows)))
    for path in [job, *job.rglob("*")]:
        os.chown(path, int(UID), int(UID))  # the trainer runs as its own uid, not root
    done = image.run(
        [*image.entrypoint, "--spec", "/job/spec.json"],
        timeout=600,
        volumes={str(job): "/job"},
        env={"OMP_NUM_THREADS": "2"},
    )
    assert done.returncode == 0, done.stderr[-4000:]
    events = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert [e for e in events if e["kind"] == "metrics" and "train_loss" in e["data"]], events
    (result,) = [e for e in events if e["kind"] == "result"]
    assert "adapter_model.safetensors" in result["data"]["files"]
    manifest = json.loads((job / "store" / "jobs" / "ftjob-image" / "model" / "manifest.json").read_text())
    assert {f["name"] if isinstance(f, dict) else f for f in manifest["files"]} >= {"adapter_model.safetensors"}


@pytest.mark.parametrize("image", ["service"], indirect=True)
def test_service_serves_healthz(image: Container, tmp_path: Path) -> None:
    """``tuneforge serve`` in the image on the host's loopback (chroot isolation shares the network)."""
    port = free_port()
    command = [*image.entrypoint, "serve", "--host", "127.0.0.1", "--port", str(port)]
    with image.background(command, tmp_path / "serve.log") as proc:
        deadline = time.monotonic() + 90
        status = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                status = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code
                break
            except httpx.TransportError:
                time.sleep(0.5)
        log = (tmp_path / "serve.log").read_text()
        assert status == 200, f"/healthz: {status}, exit {proc.poll()}\n{log[-3000:]}"
        models = httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=5)
        assert models.status_code == 401 and models.json()["error"]["type"], "an API route answers, key required"


@pytest.mark.parametrize("image", ["service"], indirect=True)
def test_service_cluster_mode_executor_imports(image: Container) -> None:
    done = image.run(["python3", "-c", "import tuneforge.service.executors.kubernetes"], timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.parametrize("image", ["operator"], indirect=True)
def test_operator_imports_and_help(image: Container) -> None:
    done = image.run(["python3", "-c", "import tuneforge.operator.handlers, tuneforge.operator.crd"], timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    done = image.run([*image.entrypoint, "--help"], timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "--namespace" in done.stdout and "--standalone" in done.stdout, done.stdout

"""Each image installs one lock (.ci/locks/<component>.txt): a subset of the full CI lock that holds exactly the
closure of its pyproject extras, and nothing of the other components (no web stack in the trainer, no torch in
the service, neither in the operator)."""

from __future__ import annotations

import importlib.metadata as md
import importlib.util
import subprocess
import sys
import tomllib
from pathlib import Path
from types import ModuleType

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[2]
FULL_LOCK = REPO / ".ci" / "requirements.lock"


def _compiler() -> ModuleType:
    spec = importlib.util.spec_from_file_location("tuneforge_lock_compiler", REPO / ".ci" / "locks" / "compile.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


COMPILER = _compiler()
COMPONENTS: dict[str, tuple[str, ...]] = COMPILER.COMPONENTS
#: the target the locks are compiled for (the images' Python and platform), whatever runs the tests
MARKER_ENV = {
    "python_version": COMPILER.PYTHON_VERSION,
    "python_full_version": f"{COMPILER.PYTHON_VERSION}.0",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "os_name": "posix",
    "platform_machine": "x86_64",
}
FORBIDDEN = {
    # starlette and uvicorn are allowed: the trainer image also runs the CPU inference engine's HTTP server
    "trainer": {
        "fastapi",
        "sqlalchemy",
        "kopf",
        "kubernetes",
        "moto",
        "ruff",
        "mypy",
        "pytest",
        "import-linter",
        "playwright",
        "schemathesis",
        "openai",
    },
    "service": {
        "torch",
        "transformers",
        "trl",
        "peft",
        "accelerate",
        "triton",
        "kopf",
        "moto",
        "ruff",
        "mypy",
        "pytest",
    },
    "operator": {"torch", "transformers", "fastapi", "starlette", "uvicorn", "sqlalchemy", "moto", "ruff", "pytest"},
}


def read_pins(path: Path) -> dict[str, str]:
    """``name==version`` lines (comments, options and annotations skipped) as {canonical name: version}."""
    pins: dict[str, str] = {}
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        name, sep, version = line.partition("==")
        assert sep and version, f"{path.name}:{number}: not an exact pin: {raw!r}"
        pins[canonicalize_name(name.split("[")[0])] = version.split(";")[0].strip()
    return pins


def closure(extras: tuple[str, ...]) -> set[str]:
    """Every distribution the project's base dependencies plus ``extras`` pull in, read from the installed
    metadata of the CI environment (which holds the full lock): an offline oracle for the compiled lock."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    todo = [Requirement(r) for r in project["dependencies"]]
    for extra in extras:
        todo += [Requirement(r) for r in project["optional-dependencies"][extra]]
    seen: dict[str, set[str]] = {}
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        wanted = set(req.extras)
        if name in seen and wanted <= seen[name]:
            continue
        seen.setdefault(name, set()).update(wanted)
        try:
            requires = md.distribution(name).requires or []
        except md.PackageNotFoundError:
            pytest.fail(f"{name} (wanted by pyproject's extras {extras}) is not installed: is the full lock stale?")
        for line in requires:
            sub = Requirement(line)
            if sub.marker is None or any(sub.marker.evaluate({**MARKER_ENV, "extra": e}) for e in {"", *seen[name]}):
                todo.append(sub)
    return set(seen)


@pytest.mark.parametrize("component", list(COMPONENTS))
def test_component_lock_is_a_subset_of_the_full_lock(component: str) -> None:
    full = read_pins(FULL_LOCK) | read_pins(COMPILER.EXTRA_CONSTRAINTS)
    lock = read_pins(COMPILER.lock_path(component))
    off = {n: (v, full.get(n)) for n, v in lock.items() if full.get(n) != v}
    assert not off, f"{component}.txt pins versions the full lock does not (lock, full): {off}"


@pytest.mark.parametrize("component", list(COMPONENTS))
def test_component_lock_holds_exactly_its_extras_closure(component: str) -> None:
    """Fails when pyproject's extras (or the full lock) changed and the component lock was not recompiled."""
    lock = set(read_pins(COMPILER.lock_path(component)))
    expected = closure(COMPONENTS[component])
    hint = "recompile: .venv/bin/python .ci/locks/compile.py"
    assert not expected - lock, f"{component}.txt lacks {sorted(expected - lock)}; {hint}"
    assert not lock - expected, f"{component}.txt has more than its extras need: {sorted(lock - expected)}; {hint}"


@pytest.mark.parametrize("component", list(COMPONENTS))
def test_component_lock_has_nothing_of_the_other_components(component: str) -> None:
    lock = set(read_pins(COMPILER.lock_path(component)))
    assert not lock & FORBIDDEN[component], f"{component}.txt must not install {sorted(lock & FORBIDDEN[component])}"


def test_every_lock_line_is_an_exact_pin_and_extra_constraints_are_needed() -> None:
    for component in COMPONENTS:
        read_pins(COMPILER.lock_path(component))  # asserts on anything but name==version
    locked = set().union(*(read_pins(COMPILER.lock_path(c)) for c in COMPONENTS))
    unused = set(read_pins(COMPILER.EXTRA_CONSTRAINTS)) - locked
    assert not unused, f"constraints-extra.txt pins what no image installs: {sorted(unused)}"
    assert not set(read_pins(COMPILER.EXTRA_CONSTRAINTS)) & set(read_pins(FULL_LOCK)), "already in the full lock"


def test_the_compiler_refuses_an_unknown_component() -> None:
    done = subprocess.run(
        [sys.executable, str(REPO / ".ci/locks/compile.py"), "--check", "gpu-sidecar"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "unknown component(s) gpu-sidecar" in done.stderr


@pytest.mark.slow
def test_compiled_locks_are_current() -> None:
    """uv recompiles every lock against PyPI's index (uv's cache when warm) and finds nothing to change."""
    done = subprocess.run(
        [sys.executable, str(REPO / ".ci/locks/compile.py"), "--check"], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]

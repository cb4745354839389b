"""Packaging: the wheel setuptools builds from pyproject.toml alone (packages.find over the three source roots)
holds every module and data file; the installed distribution gives the version; `operator/` shadows nothing."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from importlib.metadata import entry_points, version
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCE_ROOTS = ("service", "operator", "trainer_image")
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def _source_files() -> set[str]:
    """Every file of the `tuneforge` namespace in the source tree, as wheel paths."""
    files = set()
    for root in SOURCE_ROOTS:
        for path in (ROOT / root / "tuneforge").rglob("*"):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
                files.add(path.relative_to(ROOT / root).as_posix())
    return files


def test_wheel_holds_every_module_ui_asset_type_marker_and_migration(tmp_path: Path) -> None:
    src = tmp_path / "src"  # a copy: building writes build/ and *.egg-info next to pyproject.toml
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for root in SOURCE_ROOTS:
        shutil.copytree(ROOT / root, src / root, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
         "-w", str(tmp_path / "dist"), str(src)], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("tuneforge-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        dist_info = f"tuneforge-{PYPROJECT['project']['version']}.dist-info"
        entry_points_txt = archive.read(f"{dist_info}/entry_points.txt").decode()
    packaged = {n for n in names if not n.startswith(dist_info + "/")}
    expected = _source_files()
    assert expected - packaged == set(), "missing from the wheel"
    assert packaged - expected == set(), "in the wheel but not in the source tree"
    for must in ("tuneforge/service/py.typed", "tuneforge/service/ui/index.html", "tuneforge/service/ui/app.js",
                 "tuneforge/service/ui/style.css", "tuneforge/service/ui/rate.html", "tuneforge/service/ui/rate.js",
                 "tuneforge/service/ui/rate.css", "tuneforge/service/db/migrations/env.py",
                 "tuneforge/service/db/migrations/script.py.mako",
                 "tuneforge/service/db/migrations/versions/0001_round_one.py",
                 "tuneforge/service/db/migrations/versions/0002_bigint_sequences.py",
                 "tuneforge/contracts/__init__.py", "tuneforge/operator/__init__.py", "tuneforge/trainer/__init__.py",
                 "tuneforge/storage/__init__.py"):
        assert must in packaged, must
    assert "tuneforge = tuneforge.service.cli.main:app" in entry_points_txt
    # one PEP 420 namespace: no tuneforge/__init__.py may appear (it would hide the other portions)
    assert "tuneforge/__init__.py" not in names


def test_version_comes_from_the_installed_distribution() -> None:
    import tuneforge.service

    assert tuneforge.service.__version__ == version("tuneforge") == PYPROJECT["project"]["version"]
    (script,) = [e for e in entry_points(group="console_scripts") if e.name == "tuneforge"]
    assert script.value == "tuneforge.service.cli.main:app"


def _run(code: str, cwd: Path, **env: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin", **env})
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_components_import_from_anywhere_and_operator_is_the_stdlibs(tmp_path: Path) -> None:
    code = ("import operator, tuneforge.service, tuneforge.operator, tuneforge.trainer, tuneforge.contracts, "
            "tuneforge.storage; print(operator.__file__); print(operator.itemgetter); "
            "print(tuneforge.operator.__file__)")
    stdlib = Path(sysconfig.get_paths()["stdlib"]).resolve()
    # from a neutral directory (the install provides the packages), from the repository root (where `operator/`
    # is a folder), and with the repository root on sys.path as pytest's `pythonpath = ["."]` puts it
    for cwd, env in ((tmp_path, {}), (ROOT, {}), (tmp_path, {"PYTHONPATH": str(ROOT)})):
        found, itemgetter, ours = _run(code, cwd, **env).splitlines()
        assert Path(found).resolve().parent == stdlib and itemgetter == "<class 'operator.itemgetter'>", (cwd, env)
        assert Path(ours) == ROOT / "operator" / "tuneforge" / "operator" / "__init__.py"


def test_the_tuneforge_command_is_installed() -> None:
    command = Path(sys.executable).parent / "tuneforge"
    assert command.is_file(), f"{command}: run `bash .ci/setup`"
    done = subprocess.run([str(command), "db", "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "upgrade" in done.stdout and "current" in done.stdout, done.stderr

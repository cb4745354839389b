"""Check the Python environment before the GPU run: carried wheels at their pinned versions, and what every
carried or trained-with package requires, met.

    python3 bench/gpu/envcheck.py [--strict]

Prints one line per package. With ``--strict`` (run.sh passes it once it has installed the carried wheels) a
pinned package missing or at another version fails the check (exit 1): the install went wrong and nothing
measured would mean what it says. Unmet requirements of other packages are printed as warnings: the image's
own versions may still work (the run records every version it used).
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import sys
from pathlib import Path

PINS = Path(__file__).resolve().parent / "wheels.txt"
#: pins that only the GPU needs (missing elsewhere is fine unless --strict)
GPU_ONLY = {"liger-kernel"}
#: packages the run trains with besides the carried ones, whose requirements are checked too
ALSO_CHECK = ("torch", "transformers", "accelerate")


def canonical(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def read_pins(path: Path = PINS) -> dict[str, str]:
    pins = {}
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[canonical(name)] = version.strip()
    return pins


def installed(name: str) -> str | None:
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None


def unmet_requirements(name: str) -> list[str]:
    from packaging.requirements import Requirement

    try:
        requires = md.requires(name) or []
    except md.PackageNotFoundError:
        return []
    problems = []
    for text in requires:
        req = Requirement(text)
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        have = installed(req.name)
        if have is None:
            problems.append(f"{name} needs {req}, not installed")
        elif req.specifier and not req.specifier.contains(have, prereleases=True):
            problems.append(f"{name} needs {req}, found {have}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--strict", action="store_true", help="fail when a pinned package is missing or differs")
    args = parser.parse_args(argv)
    pins = read_pins()
    errors, warnings = [], []
    print(f"python {sys.version.split()[0]} at {sys.executable}")
    for name, want in pins.items():
        have = installed(name)
        print(f"  {name:<20} pinned {want:<10} installed {have}")
        if have != want and (args.strict or (have is not None) or name not in GPU_ONLY):
            (errors if args.strict else warnings).append(f"{name}: pinned {want}, installed {have}")
    for name in ALSO_CHECK:
        print(f"  {name:<20} {'(image)':<17} installed {installed(name)}")
    for name in [*pins, *ALSO_CHECK]:
        if installed(name) is not None:
            warnings += unmet_requirements(name)
    for line in warnings:
        print(f"warning: {line}")
    for line in errors:
        print(f"error: {line}")
    if errors:
        print("the carried wheels are not what bench/gpu/wheels.txt pins: run bench/gpu/fetch_wheels.sh again")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

#!/usr/bin/env bash
# Download the wheels the GPU machine lacks into .whl/ (ignored by git, carried by the device call), for
# CPython 3.12 on manylinux x86_64, at the versions bench/gpu/wheels.txt pins, each without dependencies (the
# list names every one needed). Replaces what .whl/ held (two versions of one package stop the install), then
# prints the size of everything a device call would send: it must stay well under 64 MiB.
#
#   bash bench/gpu/fetch_wheels.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ -x "$(cat .venv/.deps 2>/dev/null)/bin/pip" ]; then PIP=("$(cat .venv/.deps)/bin/pip"); else PIP=(python3 -m pip); fi
mapfile -t pins < <(sed 's/#.*//; s/[[:space:]]//g; /^$/d' bench/gpu/wheels.txt)
rm -rf .whl
mkdir -p .whl
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 \
         manylinux2014_x86_64 manylinux1_x86_64; do platforms+=(--platform "$p"); done
"${PIP[@]}" download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${platforms[@]}" -d .whl "${pins[@]}"
ls -1 .whl
n=$(ls .whl/*.whl | wc -l)
if [ "$n" -ne "${#pins[@]}" ]; then
  echo "error: ${#pins[@]} pins but $n wheels in .whl/" >&2
  exit 1
fi
wheels=$(du -cb .whl/*.whl | tail -1 | cut -f1)
# what a device call sends: tracked and untracked-not-ignored files, plus the carried folders
tree=$(git ls-files -z --cached --others --exclude-standard | du -cb --files0-from=- 2>/dev/null | tail -1 | cut -f1)
staged=$(du -sb .gpu-bench 2>/dev/null | cut -f1 || true)
staged=${staged:-0}
total=$((wheels + tree + staged))
mib() { awk -v b="$1" 'BEGIN { printf "%.1f MiB", b / 1048576 }'; }
echo "wheels $(mib "$wheels") ($n files); working tree $(mib "$tree"); .gpu-bench $(mib "$staged"); a device call sends $(mib "$total") of 64 MiB"
if [ "$total" -gt $((56 * 1048576)) ]; then
  echo "error: over 56 MiB: too close to the device call's 64 MiB limit" >&2
  exit 1
fi

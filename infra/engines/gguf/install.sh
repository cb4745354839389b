#!/usr/bin/env bash
# llama.cpp's Hugging Face -> GGUF converter, for `POST /v1/models/{id}/export {"format": "gguf"}`.
#
# The `gguf` package on PyPI reads and writes GGUF but has no converter; llama.cpp's maintained one
# (convert_hf_to_gguf.py, its conversion/ package and gguf-py/) ships inside the source release of
# llama-cpp-python on PyPI. This unpacks just those files (nothing is compiled) into the cache, keyed by version,
# and prints the directory to put in TUNEFORGE_GGUF_CONVERTER. `--print-dir` only prints it.
set -euo pipefail
VERSION=0.3.36
CACHE=${TUNEFORGE_CACHE:-$HOME/.cache/tuneforge}/gguf-converter/$VERSION
DIR=$CACHE/llama.cpp
if [ "${1:-}" = "--print-dir" ]; then echo "$DIR"; exit 0; fi
if [ -f "$DIR/convert_hf_to_gguf.py" ] && [ -f "$CACHE/.complete" ]; then echo "$DIR"; exit 0; fi
PIP=${PIP:-python3 -m pip}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
$PIP download -q --no-deps --no-binary :all: -d "$tmp" "llama-cpp-python==$VERSION" >&2
tar -xzf "$tmp"/llama_cpp_python-"$VERSION".tar.gz -C "$tmp" --wildcards \
  "*/vendor/llama.cpp/convert_hf_to_gguf.py" "*/vendor/llama.cpp/conversion/*" "*/vendor/llama.cpp/gguf-py/*" \
  "*/vendor/llama.cpp/LICENSE" 2>/dev/null || \
tar -xzf "$tmp"/llama_cpp_python-"$VERSION".tar.gz -C "$tmp" --wildcards \
  "*/vendor/llama.cpp/convert_hf_to_gguf.py" "*/vendor/llama.cpp/gguf-py/*" "*/vendor/llama.cpp/LICENSE"
rm -rf "$CACHE"
mkdir -p "$CACHE"
mv "$tmp"/llama_cpp_python-"$VERSION"/vendor/llama.cpp "$DIR"
touch "$CACHE/.complete"
echo "$DIR"

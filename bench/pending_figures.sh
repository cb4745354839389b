#!/usr/bin/env bash
# The figures still to take on this project's CPU machine, in one run: start it on an idle machine (nothing else
# running: these compare rates within each run, but a machine shared with test suites gave 0.2 tokens/s where an
# idle one gives 13) and leave it alone. Each result lands in $OUT (default /tmp/tuneforge-figures) as JSON plus
# its log; bench/README.md and the docs name the section each one fills.
#
#   bash bench/pending_figures.sh [serving] [ppo_memory] [gsm8k] [safety]   # default: all, in this order
#
# About an hour on 2 idle cores: serving (issue #12) ~25 min, PPO memory (#14) ~15 min, GSM8K base model
# (#15) ~10 min, the safety report (#16) ~10 min.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/tuneforge-figures}
mkdir -p "$OUT"
export PYTHONPATH=.:service:operator:trainer_image HF_HUB_OFFLINE=1
export TUNEFORGE_SHARED_DATA=${TUNEFORGE_SHARED_DATA:-$(cd .. && pwd)/shared/data}
PY=.venv/bin/python
steps=("$@")
[ ${#steps[@]} -eq 0 ] && steps=(serving ppo_memory gsm8k safety)

run() {  # name, command...
  local name=$1; shift
  local started=$SECONDS
  echo "== $name: $*  (load $(cut -d' ' -f1-3 /proc/loadavg))"
  "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  echo "   $name: exit $rc after $(( (SECONDS - started) / 60 )) min (load $(cut -d' ' -f1-3 /proc/loadavg)); log $OUT/$name.log"
}

for step in "${steps[@]}"; do
  case $step in
    serving) run serving $PY -u bench/serving.py --engines tuneforge,vllm,hf --concurrency 1,4,16 \
               --mixes base,one,four --max-tokens 128 --out "$OUT/serving.json" ;;
    ppo_memory) run ppo_memory $PY -u bench/trainer_ppo_memory.py --steps 2 --out "$OUT/ppo_memory.json" ;;
    gsm8k) run gsm8k $PY -u bench/evals.py gsm8k --model SmolLM2-135M-Instruct --items 50 --tokens 256 --out "$OUT/gsm8k.json" ;;
    safety) run safety $PY -u bench/safety_report.py --rows 48 --redteam 20 --max-tokens 48 \
              --out "$OUT/safety_report.json" ;;
    *) echo "unknown step: $step (serving, ppo_memory, gsm8k, safety)"; exit 2 ;;
  esac
done

#!/usr/bin/env bash
# The figures still to take on this project's CPU machine, in one run: start it on an idle machine (nothing else
# running: these compare rates within each run, but a machine shared with test suites gave 0.2 tokens/s where an
# idle one gives 13) and leave it alone. Each result lands in $OUT (default /tmp/tuneforge-figures) as JSON plus
# its log; bench/README.md and the docs name the section each one fills.
#
#   bash bench/pending_figures.sh [rlhf] [rlhf_beta02] [serving] [rl_compare] [gsm8k] [chat] [ppo_memory] [safety]
#                                     # default: all but rlhf_beta02 (PPO with beta 0.2, ~80 min), in this order
#
# About two hours on 2 idle cores: the classic RLHF pipeline SFT -> reward model -> PPO on HH-RLHF (#14)
# ~20 min, serving (#12) ~25 min, PPO vs GRPO vs RLOO on the pipeline's reward model (#14, needs rlhf) ~40 min,
# GSM8K and the demo's chat data (ROUGE-L), each base vs an SFT job's tuned model through the job's evals (#15)
# ~15 min each, PPO memory (#14) ~15 min, the safety report (#16) ~10 min.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/tuneforge-figures}
mkdir -p "$OUT"
export PYTHONPATH=.:service:operator:trainer_image HF_HUB_OFFLINE=1
export TUNEFORGE_SHARED_DATA=${TUNEFORGE_SHARED_DATA:-$(cd .. && pwd)/shared/data}
PY=.venv/bin/python
steps=("$@")
[ ${#steps[@]} -eq 0 ] && steps=(rlhf serving rl_compare gsm8k chat ppo_memory safety)

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
    rlhf) run rlhf $PY -u examples/trainer_methods.py ppo --keep "$OUT/rlhf" --steps 16 ;;
    rl_compare) run rl_compare $PY -u bench/rl_reward_model.py --store "$OUT/rlcmp" --pipeline "$OUT/rlhf" \
                  --steps 16 ;;
    rlhf_beta02) run rlhf_beta02 $PY -u examples/trainer_methods.py ppo --keep "$OUT/rlhf02" --steps 16 \
                   --set kl_coef=0.2 &&
                 run rl_compare_beta02 $PY -u bench/rl_reward_model.py --store "$OUT/rlcmp02" \
                   --pipeline "$OUT/rlhf02" --algorithms ppo --kl-coef 0.2 --steps 16 --samples 8 ;;
    serving) run serving $PY -u bench/serving.py --engines tuneforge,vllm,hf --concurrency 1,4,16 \
               --mixes base,one,four --max-tokens 128 --out "$OUT/serving.json" ;;
    ppo_memory) run ppo_memory $PY -u bench/trainer_ppo_memory.py --steps 2 --out "$OUT/ppo_memory.json" ;;
    gsm8k) run gsm8k $PY -u bench/evals.py compare --task gsm8k --train-rows 200 --epochs 1 --batch-size 4 \
             --items 40 --tokens 200 --out "$OUT/gsm8k.json" ;;
    chat) run chat $PY -u bench/evals.py compare --task chat --train-rows 220 --epochs 2 --items 40 --tokens 64 \
            --out "$OUT/chat.json" ;;
    safety) run safety $PY -u bench/safety_report.py --rows 48 --redteam 20 --max-tokens 48 \
              --out "$OUT/safety_report.json" ;;
    *) echo "unknown step: $step (rlhf, rlhf_beta02, serving, rl_compare, gsm8k, chat, ppo_memory, safety)"
       exit 2 ;;
  esac
done

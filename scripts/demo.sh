#!/usr/bin/env bash
# README command 1: set up, tokenize the embedded corpus, train cpu-small for 5 minutes by the clock,
# sample, evaluate. Re-running continues the run in runs/demo instead of starting over (its budget
# spent, it only samples and evaluates again; `demo.sh --minutes 10` trains it on to 10 minutes).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
psy() { .venv/bin/psyduck "$@"; }
tok=bpe-8192  # cpu-small's tokenizer; data prepared with another one (an older demo) is redone
grep -q "\"tokenizer\": \"$tok\"" data/wiki-vital/meta.json 2>/dev/null || psy prepare wiki-vital --tokenizer $tok --out data/wiki-vital
resume=()
[[ -f runs/demo/config.json ]] && resume=(--resume)  # a second run continues the first
psy train --preset cpu-small --data data/wiki-vital --out runs/demo ${resume[@]+"${resume[@]}"} --minutes 5 "$@"
echo
echo "=== three samples from runs/demo (each stops at its end-of-text token) ==="
for seed in 0 1 2; do
  psy generate runs/demo --prompt "The world" --max-new-tokens 100 --temperature 0.7 --top-k 50 --seed "$seed"
done
echo
psy eval runs/demo --json
echo "loss curve: runs/demo/loss_curve.png   samples during training: runs/demo/samples.txt"

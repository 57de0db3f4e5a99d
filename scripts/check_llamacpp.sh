#!/usr/bin/env bash
# Export a run to GGUF (f32, f16, q8_0) and check each file in llama.cpp (llama-cpp-python) against
# PsyDuck: tokenization, logits (f32: within 1e-3, float32 KV cache) and 30 greedy tokens.
#   scripts/check_llamacpp.sh runs/demo [exports/check]
# Without llama-cpp-python it says so and exits 0 (it is optional and slow to build from source).
set -euo pipefail
RUN=${1:?usage: scripts/check_llamacpp.sh RUN [OUT_DIR]}
OUT=${2:-exports/llamacpp-check}
PY=${PYTHON:-python}
mkdir -p "$OUT"
files=()
for q in f32 f16 q8_0; do
  "$PY" -m psyduck export "$RUN" --format gguf --quant "$q" --out "$OUT/model-$q.gguf" --force
  files+=("$OUT/model-$q.gguf")
done
exec "$PY" -m psyduck.interop.llamacpp "$RUN" "${files[@]}"

#!/usr/bin/env bash
# Issue 15 (graph engine), one H200: gen benches (307M, 2B), profile, agreement, FP32-head micro, GPU tests.
#   bash bench/gpu/i15.sh OUTDIR        (from the tree's root; at most BUDGET=124 s + ~1 s)
# Each step runs under `timeout` and a failing step does not stop the next; logs and JSON go to
# OUTDIR; a short summary is printed last.
OUT=${1:-/tmp/i15_out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
START=$(date +%s)
BUDGET=${BUDGET:-124}  # seconds for all steps (the pass allows 130; the summary needs ~1)
step() {  # step NAME SECONDS CMD...: at most SECONDS, and never past the budget
  local name=$1 secs=$2; shift 2
  local t0=$(date +%s)
  local left=$(( START + BUDGET - t0 ))
  (( secs > left )) && secs=$left
  (( secs < 1 )) && { echo "$name skipped (budget)" >>"$OUT/steps.txt"; return; }
  timeout "$secs" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  echo "$name rc=$rc $(( $(date +%s) - t0 ))s" >>"$OUT/steps.txt"
}
: >"$OUT/steps.txt"
# 1. the target: 307M at B = 64 / 256 / 1024 (plain generate at 256), profile at 256, agreement
#    at 64, then (same process) the FP32-head variants, lightning bandwidth, grouped GEMM check
step gen307 60 $PY bench/rollout.py gen --batch 64 256 1024 --engines graph generate --baseline-batch 256 \
  --profile 256 --agreement 64 --micro --micro-hidden 1024 2048 --micro-batch 256 1024 --out "$OUT"
# 2. the ~2B hybrid shape: B = 64 / 256 / 1024, plain generate at 256, profile at 256
step gen2b 40 $PY bench/rollout.py gen --hidden 2048 --layers 8 --experts 16 --batch 64 256 1024 \
  --engines graph generate --baseline-batch 256 --profile 256 --out "$OUT"
# 3. correctness on the GPU (the rest of the budget), most telling first
G=tests/test_engine_graph_gpu.py
step tests 60 $PY -m pytest -q -s -p no:cacheprovider $G::test_bf16_logprobs_against_the_learner \
  $G::test_graph_replay_equals_the_eager_step $G::test_weights_loaded_without_recapture \
  $G::test_sleep_releases_memory_and_wake_recaptures $G::test_continuous_batching_on_gpu \
  $G::test_transformers_models_on_gpu $G::test_float32_gpu_engine_equals_the_cpu_torch_path \
  tests/test_ops_decode_kernels.py::test_kernels_on_the_gpu
$PY bench/gpu/i15_summary.py "$OUT"

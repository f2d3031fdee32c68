#!/bin/bash
# i22 (issue 22) development pass, ~128 s: fused-head / RMSNorm / varlen GPU tests against float64
# and transformers, bench/logprob.py (fused head vs the bf16 floor, T = 8K), bench/moe.py (AutoEP
# expert backends), bench/learner.py on the 2.59B shape (after-long, after-short, before-long, one
# profiled step each). Each step under `timeout`; a failing step does not stop the next.
OUT=${1:?usage: bash bench/gpu/i22.sh OUTDIR}
mkdir -p "$OUT"
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm --format=csv > "$OUT/gpu.txt" 2>&1
STATUS=""
run() {
  local name=$1 t=$2; shift 2
  local s=$(date +%s)
  timeout "$t" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  STATUS="$STATUS $name:rc=$rc,$(( $(date +%s) - s ))s"
}
run tests 22 python -m pytest -q -p no:cacheprovider -m gpu -s tests/test_ops_fused_head.py tests/test_ops_rmsnorm.py tests/test_models_varlen.py
run logprob 24 python bench/logprob.py --tokens 8192 --variants fused --weight-dtypes bfloat16 float32 --reps 3 \
  --fwd-configs "128,256,64,8,3;128,256,32,8,4" --out "$OUT/logprob.json"
run moe 10 python bench/moe.py --out "$OUT/moe.json"
run learner 72 torchrun --nproc_per_node 1 bench/learner.py throughput --tokens 16384 --steps 2 --warmup 1 \
  --cases after-long,after-short,before-long --profile --fla-autotune one --out "$OUT/learner.json"
echo "== i22 summary:$STATUS"
grep -E "passed|failed|error" "$OUT/tests.log" | tail -2
grep -E "f\+b /|vs float64|tiles" "$OUT/logprob.log" | cut -c1-150
grep -E "ms .*TFLOP|fastest|Error" "$OUT/moe.log" | cut -c1-90
grep -E "^(after|before)-[a-z]+: |setup|Error" "$OUT/learner.log" | grep -v Warning | cut -c1-230 | tail -8

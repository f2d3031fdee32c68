#!/bin/bash
# i22 (issue 22) final measurements from merged main, ~300 s on one H200; writes bench/results/
# (or OUTDIR if given). Each step under `timeout`; a failing step does not stop the next.
#   logprob  fused head vs the bf16 floor at T = 8K and 16K, bf16 and FP32 weight      ~30 s
#   learner  2.59B, 16K tokens: after/before × long/short, 4 steps + 1 profiled each     ~110 s
#   m1slice  M1's per-GPU slice, 8K tokens: after long/short, profiled                    ~70 s
#   tests    the GPU tests of the fused head, RMSNorm, varlen attention                   ~25 s
OUT=${1:-bench/results/i22}
mkdir -p "$OUT"
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} PYTHONUNBUFFERED=1
STATUS=""
run() {
  local name=$1 t=$2; shift 2
  local s=$(date +%s)
  timeout "$t" "$@" > "$OUT/$name.log" 2>&1
  STATUS="$STATUS $name:$?/$(( $(date +%s) - s ))s"
}
( timeout 60 python bench/warm_kernels.py > "$OUT/warm.log" 2>&1 ) &
run tests 40 python -m pytest -q -p no:cacheprovider -m gpu -s tests/test_ops_fused_head.py tests/test_ops_rmsnorm.py tests/test_models_varlen.py
wait
run logprob 45 python bench/logprob.py --tokens 8192 16384 --variants fused --weight-dtypes bfloat16 float32 --reps 5 \
  --out "$OUT/logprob.json"
run learner 150 torchrun --nproc_per_node 1 bench/learner.py throughput --tokens 16384 --steps 4 --warmup 1 \
  --cases after-long,after-short,before-long,before-short --profile --fla-autotune one --moe-bench --out "$OUT/learner.json"
run m1slice 90 torchrun --nproc_per_node 1 bench/learner.py throughput --shape m1slice --tokens 8192 --steps 3 \
  --warmup 1 --cases after-long,after-short --profile --fla-autotune one --moe-bench --out "$OUT/m1slice.json"
echo "== i22 final (rc/seconds):$STATUS"
grep -E "passed|failed" "$OUT/tests.log" | tail -1
grep -E "f\+b / \(9|vs float64" "$OUT/logprob.log" | cut -c1-115
grep -E "^(after|before)-[a-z]+: [0-9]+ seqs" "$OUT/learner.log" "$OUT/m1slice.log" | cut -c1-130

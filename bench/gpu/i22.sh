#!/bin/bash
# i22 (issue 22), ~130 s, possibly the only GPU pass, so final-quality numbers where they fit:
#  tests    the fused head / RMSNorm / varlen attention on GPU against float64 and transformers
#  learner  bench/learner.py, 2.59B, 16K tokens: after-long, after-short, before-long (one
#           profiled step each) + AutoEP expert backends on its MoE shape
#  logprob  bench/logprob.py T = 8K, fused head, bf16 and FP32 weight, vs the bf16 floor, float64 check
#  m1slice  bench/learner.py --shape m1slice, 8K tokens, after-long + expert backends
# Each step under `timeout`; a failing step does not stop the next. Logs and JSON in OUTDIR.
OUT=${1:?usage: bash bench/gpu/i22.sh OUTDIR}
mkdir -p "$OUT"
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm --format=csv > "$OUT/gpu.txt" 2>&1
STATUS=""
run() {
  local name=$1 t=$2; shift 2
  local s=$(date +%s)
  timeout "$t" "$@" > "$OUT/$name.log" 2>&1
  STATUS="$STATUS $name:$?/$(( $(date +%s) - s ))s"
}
# compile the benches' Triton kernels in the background while the tests run (bench/warm_kernels.py)
( timeout 32 python bench/warm_kernels.py > "$OUT/warm.log" 2>&1 ) &
WARM=$!
run tests 20 python -m pytest -q -p no:cacheprovider -m gpu -s tests/test_ops_fused_head.py tests/test_ops_rmsnorm.py tests/test_models_varlen.py
s=$(date +%s); wait $WARM; STATUS="$STATUS warm-wait:$(( $(date +%s) - s ))s"
run learner 52 torchrun --nproc_per_node 1 bench/learner.py throughput --tokens 16384 --steps 2 --warmup 1 \
  --cases after-long,after-short,before-long --profile --fla-autotune one --moe-bench --out "$OUT/learner.json"
run logprob 14 python bench/logprob.py --tokens 8192 --variants fused --weight-dtypes bfloat16 float32 --reps 3 \
  --out "$OUT/logprob.json"
run m1slice 32 torchrun --nproc_per_node 1 bench/learner.py throughput --shape m1slice --tokens 8192 --steps 2 \
  --warmup 1 --cases after-long --fla-autotune one --moe-bench --out "$OUT/m1slice.json"
echo "== i22 (rc/seconds):$STATUS"
grep -E "passed|failed|[Ee]rror" "$OUT/tests.log" | tail -2 | cut -c1-120
tr '\n' ' ' < "$OUT/warm.log" | cut -c1-120; echo
grep -E "^(after|before)-[a-z]+: [0-9]+ seqs|Error" "$OUT/learner.log" | cut -c1-105 | tail -4
grep -E "^(after|before)-[a-z]+: GPU" "$OUT/learner.log" | cut -c1-150
grep -E "f\+b / \(9|vs float64|Error" "$OUT/logprob.log" | cut -c1-115 | tail -4
grep -E "^after-long: [0-9]+ seqs|Error" "$OUT/m1slice.log" | cut -c1-105 | tail -2

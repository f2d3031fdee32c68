#!/usr/bin/env bash
# Lead's final pass from .gpu/m.tgz (merge-gpu 9a4b3aa): loop (graph cold, then hf warm), rollout gen
# with baselines, GPU tests (i15, i22), learner + logprob benches. Each step bounded; skips a step
# if the pass's deadline (DL seconds) would be passed. Small tarballs only (logs, json, tables).
T0=$(date +%s); DL=${DL:-540}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl > /tmp/pip.log 2>&1
echo "wheels rc=$? $(( $(date +%s) - T0 )) s"
export TORCH_CUDA_ARCH_LIST=9.0 RAY_AUTH_MODE=disabled WANDB_MODE=disabled PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 PATH=/tmp/site/bin:$PATH
export PYTHONPATH=/tmp/site:/tmp/w/m
rm -rf /tmp/w/m /tmp/o && mkdir -p /tmp/w/m /tmp/o && tar xzf .gpu/m.tgz -C /tmp/w/m
python3 -c "import torch,triton;print(torch.__version__,triton.__version__)" | tee /tmp/o/ver.txt; nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader | tee /tmp/o/gpu.txt
cleanup() { pkill -9 -f raylet; pkill -9 -f gcs_server; pkill -9 -f 'ray::'; pkill -9 -f torchrun; sleep 1; } 2>/dev/null
step() {  # step NAME SECONDS CMD... (run in the tree; skipped past the deadline)
  local n=$1 t=$2; shift 2; local now=$(date +%s); local left=$(( T0 + DL - now ))
  (( t > left )) && t=$left
  (( t < 10 )) && { echo "== $n skipped (deadline)"; return; }
  ( cd /tmp/w/m && timeout -k 5 $t "$@" > /tmp/o/$n.log 2>&1 ); local rc=$?; cleanup
  echo "== $n rc=$rc $(( $(date +%s) - now )) s (limit $t)"
}
pack() {  # pack NAME DIRS...: logs/json/tables under 3 MB each, no checkpoints
  (cd /tmp/o && find "${@:2}" -type f \( -name '*.log' -o -name '*.json' -o -name '*.jsonl' -o -name '*.txt' -o -name '*.table' -o -name '*.out' \) -size -3M 2>/dev/null | grep -v checkpoint | tar czf $OUT/$1.tgz -T -)
}
# 3. rollout gen at 307M: graph at 64/256/1024, hf and plain generate at 256
step t22 40 python -m pytest -q -s -p no:cacheprovider -m gpu tests/test_ops_fused_head.py tests/test_ops_rmsnorm.py tests/test_models_varlen.py
tail -8 /tmp/o/t22.log
step gen307 55 python bench/rollout.py gen --batch 256 --engines graph hf generate --baseline-batch 256 --out /tmp/o/r307
grep -E "^ *(B|batch|[0-9]+ )|x[0-9]|graph|generate" /tmp/o/gen307.log | grep -v Loading | tail -12
# 4. GPU tests: the graph engine and decode kernels; the fused head / RMSNorm / varlen
G=tests/test_engine_graph_gpu.py
step t15 70 python -m pytest -q -s -p no:cacheprovider -m gpu $G tests/test_ops_decode_kernels.py tests/test_weight_ipc.py
tail -6 /tmp/o/t15.log
# 1. the loop, cold caches, graph engine: time to step 0, step breakdown, reward
step loop_graph ${LT:-200} env TIMEOUT=$(( ${LT:-200} - 8 )) LABEL=small_gpu_graph bash bench/gpu_loop.sh /tmp/o/lg 400 rollout.engine=graph
tail -25 /tmp/o/loop_graph.log
# 2. the loop with the hf engine, warm kernel caches: the rollout stage before/after
[ "${HT:-75}" != 0 ] && step loop_hf ${HT:-75} env TIMEOUT=$(( ${HT:-75} - 6 )) LABEL=small_gpu_hf bash bench/gpu_loop.sh /tmp/o/lh 400 rollout.engine=hf
tail -14 /tmp/o/loop_hf.log
for d in lg lh; do tail -c 1500 /tmp/o/$d/run.log 2>/dev/null | grep -v "^\s*$" | tail -6; done
pack loop loop_graph.log loop_hf.log lg lh gpu.txt ver.txt
# 5. learner throughput with the promoted head; logprob fused vs floor
step learner 55 torchrun --nproc_per_node 1 bench/learner.py throughput --tokens 16384 --steps 2 --warmup 1 \
  --cases after-long,after-short --profile --fla-autotune one --out /tmp/o/learner.json
grep -E "^ *(case|after|before)" /tmp/o/learner.log | cut -c1-200 | tail -8
step logprob 20 python bench/logprob.py --tokens 8192 --variants fused --weight-dtypes bfloat16 float32 --reps 3 --out /tmp/o/logprob.json
grep -E "f\+b / \(9|vs float64|Error" /tmp/o/logprob.log | cut -c1-130 | tail -4
# 6. the ~2B shape with baselines, if time is left
step gen2b 45 python bench/rollout.py gen --hidden 2048 --layers 8 --experts 16 --batch 256 1024 --engines graph hf generate --baseline-batch 256 --out /tmp/o/r2b
grep -E "x[0-9]|graph" /tmp/o/gen2b.log | grep -v Loading | tail -6
pack rest gen307.log r307 t15.log t22.log learner.log learner.json logprob.log logprob.json gen2b.log r2b
echo "pass total $(( $(date +%s) - T0 )) s"

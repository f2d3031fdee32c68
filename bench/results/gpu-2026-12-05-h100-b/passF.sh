#!/usr/bin/env bash
# Second call: the fixed GPU tests, the small_gpu loop long enough for the reward bar, gpu_2b sync.
T0=$(date +%s); DL=${DL:-540}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl > /tmp/pip.log 2>&1
echo "wheels rc=$? $(( $(date +%s) - T0 )) s"
export TORCH_CUDA_ARCH_LIST=9.0 RAY_AUTH_MODE=disabled WANDB_MODE=disabled PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 PATH=/tmp/site/bin:$PATH
export PYTHONPATH=/tmp/site:/tmp/w/m
rm -rf /tmp/w/m /tmp/o && mkdir -p /tmp/w/m /tmp/o && tar xzf .gpu/m.tgz -C /tmp/w/m
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee /tmp/o/gpu.txt
cleanup() { pkill -9 -f raylet; pkill -9 -f gcs_server; pkill -9 -f 'ray::'; pkill -9 -f torchrun; sleep 1; } 2>/dev/null
step() {
  local n=$1 t=$2; shift 2; local now=$(date +%s); local left=$(( T0 + DL - now ))
  (( t > left )) && t=$left
  (( t < 10 )) && { echo "== $n skipped (deadline)"; return; }
  ( cd /tmp/w/m && timeout -k 5 $t "$@" > /tmp/o/$n.log 2>&1 ); local rc=$?; cleanup
  echo "== $n rc=$rc $(( $(date +%s) - now )) s (limit $t)"
}
pack() {
  (cd /tmp/o && find "${@:2}" -type f \( -name '*.log' -o -name '*.json' -o -name '*.jsonl' -o -name '*.txt' \) -size -3M 2>/dev/null | grep -v checkpoint | grep -v base_model | tar czf $OUT/$1.tgz -T -)
}
step t15 70 python -m pytest -q -s -p no:cacheprovider -m gpu tests/test_engine_graph_gpu.py tests/test_ops_decode_kernels.py tests/test_weight_ipc.py
tail -4 /tmp/o/t15.log
pack a t15.log gpu.txt
step loop_graph ${LT:-320} env TIMEOUT=$(( ${LT:-320} - 8 )) LABEL=small_gpu_graph bash bench/gpu_loop.sh /tmp/o/lg 400 rollout.engine=graph
tail -12 /tmp/o/loop_graph.log | cut -c1-300
pack b loop_graph.log lg
step g2b ${GT:-150} env TIMEOUT=$(( ${GT:-150} - 8 )) EXP=gpu_2b LABEL=gpu_2b bash bench/gpu_loop.sh /tmp/o/g2 6 rollout.engine=graph cluster.gpu_memory_gib=79
tail -12 /tmp/o/g2b.log | cut -c1-300
grep -h -o '"sync/[a-z_]*": [0-9.e-]*\|"time/[a-z_]*": [0-9.]*' /tmp/o/g2/run/metrics.jsonl 2>/dev/null | tail -14
pack c g2b.log g2
echo "pass total $(( $(date +%s) - T0 )) s"

#!/usr/bin/env bash
# Issue 16's development pass on one H200 (150 s): the CUDA IPC hand-off test, then the loop
# (+exp=small_gpu: colocated, CUDA IPC sync, packed learn) from a cold kernel cache with a timed
# start-up and a profile of the learn stage, then again warm (caches filled), with the learner's
# optimizer offload on. Usage: bash bench/gpu/i16.sh OUTDIR
OUT=${1:?OUTDIR}
mkdir -p "$OUT"
export TRITON_PRINT_AUTOTUNING=1
t=$(date +%s)
if python3 -c "import pytest" 2>/dev/null; then
  timeout -k 5 25 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_weight_ipc.py > "$OUT/ipc_test.log" 2>&1
else  # no pytest on the machine: the same test function directly
  timeout -k 5 25 python3 -c 'import sys, tempfile, pathlib; sys.path.insert(0, "tests"); import test_weight_ipc as t
t.test_cuda_ipc_engine_on_same_gpu_gets_bit_identical_weights(pathlib.Path(tempfile.mkdtemp())); print("1 passed (direct)")' \
    > "$OUT/ipc_test.log" 2>&1
fi
echo "ipc_test rc=$? $(tail -1 "$OUT/ipc_test.log" | cut -c1-120) ($(( $(date +%s) - t )) s)"
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv,noheader > "$OUT/gpu.txt" 2>&1
TIMEOUT=68 LABEL=cold bash bench/gpu_loop.sh "$OUT/cold" 14 logging.profile_learn_step=4 > "$OUT/cold.out" 2>&1
TIMEOUT=40 LABEL=warm bash bench/gpu_loop.sh "$OUT/warm" 12 learner.offload_while_generating=true \
  > "$OUT/warm.out" 2>&1
# what the kernels' autotuning chose, and how long it took (Triton prints it per kernel)
grep -h "Triton autotuning for function" "$OUT"/cold/*.log "$OUT"/warm/*.log 2>/dev/null \
  | sed 's/,.*finished after/ finished after/' | sort | uniq -c | sort -rn | head -40 > "$OUT/autotune.txt"
grep -h -B2 -A45 "== train_minibatch" "$OUT"/cold/run/profile_learn_step4.txt > "$OUT/profile_head.txt" 2>/dev/null
for f in cold warm; do
  echo "--- $f"; grep -E "^(run|==|  to step|  median|  colocate|  reward|  start-up|    learner)" "$OUT/$f.out" | cut -c1-230
  grep -E "Error|error:" "$OUT/$f/run.log" 2>/dev/null | grep -v Warning | tail -2 | cut -c1-200
done
echo "--- autotune: $(wc -l < "$OUT/autotune.txt") kernels/configs; total $(( $(date +%s) - t )) s"

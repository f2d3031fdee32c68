#!/usr/bin/env bash
# Issue 16 on one H200 (150 s): (1) the CUDA IPC hand-off test; (2) +exp=small_gpu from a cold
# kernel cache: time to step 0 with its breakdown, step = rollout + learn + sync, a profile of the
# learn stage (step 3); (3) +exp=gpu_2b (~2B hybrid, colocated): the sync measured in the loop.
# Prints a short summary after each part. Usage: bash bench/gpu/i16.sh OUTDIR
OUT=${1:?OUTDIR}
mkdir -p "$OUT"
export TRITON_PRINT_AUTOTUNING=1
t=$(date +%s)
if python3 -c "import pytest" 2>/dev/null; then
  timeout -k 3 18 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_weight_ipc.py > "$OUT/ipc_test.log" 2>&1
else  # no pytest on the machine: the same test function directly
  timeout -k 3 18 python3 -c 'import sys, tempfile, pathlib; sys.path.insert(0, "tests"); import test_weight_ipc as t
t.test_cuda_ipc_engine_on_same_gpu_gets_bit_identical_weights(pathlib.Path(tempfile.mkdtemp())); print("1 passed (direct)")' \
    > "$OUT/ipc_test.log" 2>&1
fi
echo "ipc_test rc=$? $(tail -1 "$OUT/ipc_test.log" | cut -c1-100) ($(( $(date +%s) - t )) s)"
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv,noheader > "$OUT/gpu.txt" 2>&1
summary() {  # the report's key lines, short
  grep -E "^(run|==|  to step|  median|  colocate|  reward|  start-up|    learner)" "$OUT/$1.out" | cut -c1-260
  grep -hE "Error|error:" "$OUT/$1/run.log" 2>/dev/null | grep -v -i warn | tail -2 | cut -c1-200
}
TIMEOUT=58 LABEL=small_gpu_cold bash bench/gpu_loop.sh "$OUT/small" 100 logging.profile_learn_step=3 > "$OUT/small.out" 2>&1
summary small
TIMEOUT=55 EXP=gpu_2b LABEL=gpu_2b bash bench/gpu_loop.sh "$OUT/b2" 50 rollout.prompts_per_step=16 > "$OUT/b2.out" 2>&1
summary b2
# what the kernels' autotuning chose and how long it took, and the learn-stage profile's head
grep -h "Triton autotuning for function" "$OUT"/small/run.log "$OUT"/b2/run.log 2>/dev/null \
  | sed 's/^.*Triton autotuning/Triton autotuning/' | sort | uniq -c | sort -rn | head -40 > "$OUT/autotune.txt"
grep -h -A45 "== train_minibatch" "$OUT"/small/run/profile_learn_step3.txt > "$OUT/profile_head.txt" 2>/dev/null
echo "autotune lines: $(wc -l < "$OUT/autotune.txt"); total $(( $(date +%s) - t )) s"

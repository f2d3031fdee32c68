#!/usr/bin/env bash
# The training loop on a GPU machine for N steps, with its start-up and step-time breakdown.
#
#   bash bench/gpu_loop.sh OUTDIR [STEPS] [hydra overrides...]
#
#   EXP=small_gpu (default) | any conf/exp name      TIMEOUT=600 (seconds, the whole run)
#   LABEL=name of the row                            WARMUP_RUN=1: a 1-step run first (fills the
#                                                      kernel caches; reported as its own row)
#
# Builds nothing: it installs the wheels carried in ./.whl (`../shared/gpu/make_wheels.sh` makes
# them: Ray, DeepSpeed, fla, Hydra, datasets, math-verify, ...) into /tmp/site unless they import
# already, then runs `python -m cispo.train +exp=$EXP` with the process sandbox backend (no Docker
# engine on the lent machines) and W&B off. Logs and JSON go to OUTDIR; the last lines printed
# are the table of bench/loop_report.py (time to step 0, median step = rollout + learn + sync,
# colocation costs, reward first/last 20 steps, when the last-20 mean reached 0.6).
# Triton's kernel cache stays in $TRITON_CACHE_DIR (default ~/.triton/cache): a second run on the
# same machine compiles nothing.
set -u
OUT=${1:?usage: bash bench/gpu_loop.sh OUTDIR [STEPS] [overrides...]}
STEPS=${2:-30}
shift $(( $# >= 2 ? 2 : 1 ))
EXP=${EXP:-small_gpu}
TIMEOUT=${TIMEOUT:-600}
LABEL=${LABEL:-$EXP}
mkdir -p "$OUT"
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} RAY_AUTH_MODE=${RAY_AUTH_MODE:-disabled} \
  WANDB_MODE=disabled PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 RAY_DEDUP_LOGS=${RAY_DEDUP_LOGS:-0}
PY=${PYTHON:-python3}
if ! PYTHONPATH=/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH} $PY -c "import ray, deepspeed, fla, hydra" 2>/dev/null; then
  if ls .whl/*.whl >/dev/null 2>&1; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
      .whl/*.whl > "$OUT/pip.log" 2>&1 || { echo "wheel install failed: $OUT/pip.log"; tail -5 "$OUT/pip.log"; }
  else
    echo "missing packages and no ./.whl to install them from (run ../shared/gpu/make_wheels.sh and carry .whl)"
  fi
fi
export PYTHONPATH=/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}

run() {  # run NAME STEPS [overrides...]
  local name=$1 steps=$2; shift 2
  local t0; t0=$(date +%s.%N)
  timeout -k 5 "$TIMEOUT" $PY -m cispo.train +exp="$EXP" sandbox.backend=process logging.wandb_mode=disabled \
    logging.progress=false trainer.total_steps="$steps" run_dir="$OUT/$name" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  echo "$name: exit $rc after $(( $(date +%s) - ${t0%.*} )) s (log $OUT/$name.log)"
  [ $rc -ne 0 ] && grep -E "Error|error:|Traceback" "$OUT/$name.log" | tail -3
  if [ -s "$OUT/$name/metrics.jsonl" ]; then
    $PY bench/loop_report.py "$OUT/$name" --t0 "$t0" --label "$LABEL${name#run}" --out "$OUT/$name.json" \
      > "$OUT/$name.table" 2>&1
  fi
}

if [ "${WARMUP_RUN:-0}" = 1 ]; then
  run run_cold 1 "$@"
fi
run run "$STEPS" "$@"
echo
for t in "$OUT"/run_cold.table "$OUT"/run.table; do [ -f "$t" ] && cat "$t"; done

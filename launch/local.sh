#!/usr/bin/env bash
# cispo on this machine: make sure a Docker engine answers (for the sandboxes), then train.
# Ray is started by the program itself (ray.address=null); learner and engines run as local
# actors, on CPU or on this machine's GPUs depending on the experiment.
#
#   launch/local.sh                          # +exp=tiny, the CPU demo
#   launch/local.sh +exp=small_gpu           # one or two GPUs
#   launch/local.sh +exp=m1_80k plan=true    # the 512-GPU plan, no GPU needed
#
# Environment: PYTHON (default: .venv/bin/python if present, else python3).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi

args=("$@")
if ((${#args[@]} == 0)); then args=(+exp=tiny); fi
case " ${args[*]} " in
  # the planner needs no Docker engine, no Ray and no GPU (same as cispo.train ... plan=true)
  *" plan=true "*) exec "$PYTHON" -m cispo.planner "${args[@]}" ;;
esac
bash launch/local/setup_docker.sh
exec "$PYTHON" -m cispo.train "${args[@]}"

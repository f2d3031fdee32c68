#!/usr/bin/env bash
# Issue 15 (graph engine), one H200: GPU tests, gen benches, micro-benchmarks, a profile.
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
step env 8 $PY -c "import torch, torch.nn.functional as F, triton, transformers, fla; print(torch.__version__, torch.cuda.get_device_name(), triton.__version__, transformers.__version__, fla.__version__, 'F.grouped_mm', hasattr(F, 'grouped_mm'), 'torch._grouped_mm', hasattr(torch, '_grouped_mm'))"
# 1. the target: 307M at B = 64 / 256 / 1024 (plain generate at 256), profile at 256, agreement at 64
step gen307 52 $PY bench/rollout.py gen --batch 64 256 1024 --engines graph generate --baseline-batch 256 \
  --profile 256 --agreement 64 --out "$OUT"
# 2. correctness on the GPU: Triton kernels vs float64, engine vs eager / CPU / learner, weights, sleep
step tests 40 $PY -m pytest -q -s -p no:cacheprovider tests/test_engine_graph_gpu.py \
  tests/test_ops_decode_kernels.py::test_kernels_on_the_gpu
# 3. FP32 head variants (agreement, time), lightning kernel bandwidth, grouped GEMM / mm(out_dtype)
step micro 11 $PY bench/rollout.py micro --out "$OUT"
# 4. the ~2B hybrid shape (graph engine only here)
step gen2b 28 $PY bench/rollout.py gen --hidden 2048 --layers 8 --experts 16 --batch 256 1024 --engines graph \
  --profile 256 --out "$OUT"
$PY - "$OUT" <<'EOF'
import json, pathlib, re, sys
out = pathlib.Path(sys.argv[1])
print(open(out / "steps.txt").read().strip().replace("\n", " | "))
print((out / "env.log").read_text().strip()[-200:] if (out / "env.log").exists() else "no env")
for name in ("rollout_gen_h1024_l8_e8.json", "rollout_gen_h2048_l8_e16.json"):
    p = out / name
    if not p.exists():
        print(name, "missing"); continue
    r = json.loads(p.read_text())
    for row in r["rows"]:
        t = row["tok_s"]
        print(f"{name[12:-5]} B={row['batch']}: graph {t.get('graph', 0):.0f} gen {t.get('generate', 0):.0f} "
              f"x{row.get('graph_vs_generate', 0):.1f} floor {row['decode_floor']['graph']['tok_s_vendor']:.0f} "
              f"{row.get('graph_pct_floor_vendor', 0):.1f}% 1st {row['first_call_s'].get('graph', 0):.2f}s "
              f"rows {row.get('graph_stats', {}).get('mean_live_rows', 0):.0f} err {row.get('graph_stats', {}).get('capture_error')}")
    if "profile" in r:
        p_ = r["profile"]
        print(f"  step B={p_['batch']}: replay {p_['replay_ms']:.3f} ms eager {p_['eager_ms']:.3f} ms "
              f"kernels {p_['kernels']} floor {p_['floor_ms']:.3f} ms")
    if "agreement" in r:
        a = r["agreement"]
        print(f"  agree: mean {a['mean_abs_dlogp']:.4f} p99 {a['p99_abs_dlogp']:.3f} max {a['max_abs_dlogp']:.3f} "
              f"pearson {a['prob_pearson']:.5f}")
    if "graph_engine" in r:
        g = r["graph_engine"]
        print(f"  head {g['head_mode']}x{g['head_parts']} gmm {g['grouped_mm']} graphs {g['cuda_graphs']} "
              f"slots {g['memory'].get('slots')} load {g['load_s']:.1f}s capture {g['stats']['capture_s']:.1f}s")
log = (out / "tests.log").read_text() if (out / "tests.log").exists() else ""
for line in log.splitlines():
    if line.startswith("GPU_CHECK"):
        d = json.loads(line[10:])
        print(" ", d.pop("check"), " ".join(f"{k[:10]}={round(v, 5) if isinstance(v, float) else v}"
                                           for k, v in d.items() if v is not None)[:150])
tail = [l for l in log.splitlines() if re.search(r"passed|failed|error|skipped", l)]
print("tests:", tail[-1] if tail else "no result")
m = out / "rollout_micro.json"
if m.exists():
    r = json.loads(m.read_text())
    print(f"micro: copy {r['copy_bytes_s'] / 1e12:.2f} TB/s mm_out {r['mm_out_dtype']} gmm {r['grouped_mm_bf16']}")
    for h in r["head"]:
        if h["batch"] == 256 and h["hidden"] == 1024:
            print(f"  head {h['weights'][:4]} {h['variant']}: err {h['rel_err']:.1e} {h['ms']:.3f} ms")
    for l in r["lightning"]:
        print(f"  lightning B={l['batch']}: {l['ms']:.3f} ms {l['bytes_s'] / 1e12:.2f} TB/s")
EOF

"""The short summary of bench/gpu/i15.sh's OUTDIR (under 1,500 characters; details in the files)."""

import json
import pathlib
import re
import sys

out, lines = pathlib.Path(sys.argv[1]), []
say = lines.append
say(open(out / "steps.txt").read().strip().replace("\n", " | "))
for name in ("h1024_l8_e8", "h2048_l8_e16"):
    p = out / f"rollout_gen_{name}.json"
    if not p.exists():
        say(f"{name} missing")
        continue
    r = json.loads(p.read_text())
    for row in r["rows"]:
        t, g = row["tok_s"], row.get("graph_stats", {})
        say(f"{name} B={row['batch']} graph {t.get('graph', 0):.0f} gen {t.get('generate', 0):.0f} "
            f"x{row.get('graph_vs_generate', 0):.1f} {row.get('graph_pct_floor_vendor', 0):.1f}%fl "
            f"1st {row['first_call_s'].get('graph', 0):.1f}s"
            + (f" ERR {g['capture_error'][:60]}" if g.get("capture_error") else ""))
    if "profile" in r:
        q = r["profile"]
        say(f" step {q['replay_ms']:.3f}ms eager {q['eager_ms']:.2f}ms k{q['kernels']} floor {q['floor_ms']:.3f}ms")
    if "agreement" in r:
        a = r["agreement"]
        say(f" agree mean {a['mean_abs_dlogp']:.4f} p99 {a['p99_abs_dlogp']:.3f} max {a['max_abs_dlogp']:.3f} "
            f"r {a['prob_pearson']:.5f}")
    if "graph_engine" in r:
        e = r["graph_engine"]
        say(f" head {e['head_mode']}x{e['head_parts']} gmm {e['grouped_mm']} graphs {e['cuda_graphs']} "
            f"cap {e['stats']['capture_s']:.1f}s")
log = (out / "tests.log").read_text() if (out / "tests.log").exists() else ""
for line in log.splitlines():
    if line.startswith("GPU_CHECK"):
        d = json.loads(line[10:])
        say(" " + d.pop("check")[:14] + " " + " ".join(
            f"{k[:8]}={round(v, 4) if isinstance(v, float) else v}" for k, v in d.items() if v is not None)[:90])
tail = [ln for ln in log.splitlines() if re.search(r"passed|failed|error|skipped", ln)]
say("tests: " + (tail[-1][:100] if tail else "no result"))
m = out / "rollout_micro.json"
if m.exists():
    r = json.loads(m.read_text())
    say(f"micro copy {r['copy_bytes_s'] / 1e12:.2f}TB/s mm_out {r['mm_out_dtype']} gmm {r['grouped_mm_bf16']}")
    say(" head h1024 B256: " + " ".join(f"{h['weights'][:4]}/{h['variant']} {h['rel_err']:.0e} {h['ms']:.3f}"
                                       for h in r["head"] if h["batch"] == 256 and h["hidden"] == 1024))
    say(" lightning " + " ".join(f"B{x['batch']} {x['bytes_s'] / 1e12:.2f}TB/s" for x in r["lightning"]))
print("\n".join(lines)[:1480])

"""The built-in synthetic task: single-digit addition answered in `\\boxed{}`.

Each row: `prompt` "a+b=\\boxed{" (it ends inside the box, so even a random model sometimes
writes a right answer and the reward has a signal from step 0), `reference` str(a+b),
`data_source` "arithmetic" (scored by the math reward). Also writes jsonl:

    python -m cispo.arithmetic --rows 100 --out prompts.jsonl
"""

from __future__ import annotations

import argparse
import json
import random

BOXED = "\\boxed{"


def rows(n: int, max_operand: int = 2, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        a, b = rng.randint(0, max_operand), rng.randint(0, max_operand)
        out.append({"prompt": f"{a}+{b}={BOXED}", "reference": str(a + b),
                    "data_source": "arithmetic", "id": f"arith-{i}"})
    return out


def dataset(n: int, max_operand: int = 2, seed: int = 0):
    import datasets

    return datasets.Dataset.from_list(rows(n, max_operand, seed))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1000)
    ap.add_argument("--max-operand", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    with open(a.out, "w") as f:
        for r in rows(a.rows, a.max_operand, a.seed):
            f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()

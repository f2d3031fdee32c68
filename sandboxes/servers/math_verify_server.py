"""Runs INSIDE the sandbox: a JSON-lines loop over stdin/stdout that answers math verdicts.

Request  {"id": 1, "gold": "3", "answer": "\\boxed{3}"}  →  {"id": 1, "verdict": true}
Request  {"id": 0, "ping": true}                          →  {"id": 0, "pong": true}
Errors come back as {"id": ..., "error": "..."}; the host enforces the wall clock and memory
limits by killing the container, so nothing here needs to be trusted to stop.
Standard library + math-verify only (it is run with `python3 -c`).
"""
import json
import sys


def main():
    from math_verify import parse, verify  # imported once: this is what makes a worker "warm"

    out = sys.stdout
    for line in sys.stdin:
        try:
            req = json.loads(line)
        except ValueError as e:
            out.write(json.dumps({"id": None, "error": f"bad request: {e}"}) + "\n")
            out.flush()
            continue
        rid = req.get("id")
        try:
            if req.get("ping"):
                resp = {"id": rid, "pong": True}
            else:
                gold = parse(str(req["gold"]), parsing_timeout=None)
                pred = parse(str(req["answer"]), parsing_timeout=None)
                # gold first: math-verify's comparison is not symmetric
                resp = {"id": rid, "verdict": bool(gold and pred and verify(gold, pred, timeout_seconds=None))}
        except Exception as e:  # a verdict error is an answer, not a crash
            resp = {"id": rid, "error": f"{type(e).__name__}: {e}"[:500]}
        out.write(json.dumps(resp) + "\n")
        out.flush()


if __name__ == "__main__":
    main()

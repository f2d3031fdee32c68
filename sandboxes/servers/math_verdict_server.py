"""Runs INSIDE the sandbox for the `math` reward: JSON-lines math-verify verdicts over stdin/stdout.

Request  {"id": 1, "gold": "\\boxed{3}", "answer": "\\boxed{3}", "soft_timeout_s": 2}
      →  {"id": 1, "verdict": true}   (a soft timeout inside math-verify reads as false)
Request  {"id": 0, "ping": true}  →  {"id": 0, "pong": true}

Two limits: math-verify's own signal-based timeout (`soft_timeout_s`) ends a slow verdict that
is busy in Python, cheaply, without losing this warm process; the host's wall clock kills the
whole container for what that cannot stop (C code such as a huge integer power, memory blow-ups).
Standard library + math-verify only (it is run with `python3 -c`).
"""
import json
import sys


def main():
    import functools
    import logging

    from math_verify import parse, verify  # imported once: this is what makes a worker "warm"

    # the G samples of a group share one reference: parse it once (parsed values are not
    # mutated by verify)
    parse_gold = functools.lru_cache(maxsize=4096)(
        lambda text, t: parse(text, parsing_timeout=t))
    logging.disable(logging.CRITICAL)  # math-verify logs each timeout; the verdict says it
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
                t = int(req.get("soft_timeout_s") or 0) or None  # whole seconds (signal.alarm)
                gold = parse_gold(str(req["gold"]), t)
                pred = parse(str(req["answer"]), parsing_timeout=t)
                # gold first: math-verify's comparison is not symmetric
                ok = bool(gold and pred and verify(gold, pred, timeout_seconds=t))
                resp = {"id": rid, "verdict": ok}
        except Exception as e:  # a verdict error is an answer, not a crash
            resp = {"id": rid, "error": f"{type(e).__name__}: {e}"[:500]}
        out.write(json.dumps(resp) + "\n")
        out.flush()


if __name__ == "__main__":
    main()

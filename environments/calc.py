"""`calc`: arithmetic with a calculator tool that returns the exact result.

Task rows (`data.source=calc`, or `python -m environments.calc`): `prompt` "37*48=\\boxed{",
`expression` "37*48", `reference` "1776", `data_source` "calc" (scored by the math reward; the
prompt ends inside the box, as the arithmetic task's does, so "1776}" is a complete answer).
The built-in set is remainders with answers spread evenly over 0..9 ("157%13"), see `remainders`.
The model may call

    <tool_call>{"name": "calc", "arguments": {"expression": "37*48"}}</tool_call>
    <tool_call>37*48</tool_call>          (short form: calc is the default tool)
    <tool_call></tool_call>               (empty: the question's own expression)

and is answered `<tool_response>1776</tool_response>`. A turn without a call is the final
answer and ends the episode. Expressions: integers, + - * // % ( ), at most 64 characters;
results are exact (Python integers), anything else is an error the model reads.

The empty call is the calculator reading the question off the page: it lets the tiny demo
(`+exp=tiny_tools`) learn *when* to call the tool and to use its answer without first learning
to copy an expression token by token, which a 0.5M-parameter random model does not pick up by
RL in minutes. `Calc(empty_call=False)` turns it off (then an empty call is an error).

`python -m environments.calc --rows 100 --out tasks.jsonl` writes rows.
"""

from __future__ import annotations

import argparse
import ast
import json
import operator
import random

from environments.registry import ToolEnvironment, ToolError, environment

BOXED = "\\boxed{"
MAX_EXPRESSION = 64
MAX_DIGITS = 60  # results longer than this are refused (2**10**9 would hang the worker)
_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
        ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod}


def evaluate(expression: str) -> int:
    """The exact integer value of `expression`; ToolError for anything else."""
    if len(expression) > MAX_EXPRESSION:
        raise ToolError(f"expression over {MAX_EXPRESSION} characters")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError:
        raise ToolError(f"cannot parse {expression!r}") from None
    return _eval(tree.body)


def _eval(node: ast.AST) -> int:
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        v = _eval(node.operand)
        return -v if isinstance(node.op, ast.USub) else v
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        a, b = _eval(node.left), _eval(node.right)
        if isinstance(node.op, (ast.FloorDiv, ast.Mod)) and b == 0:
            raise ToolError("division by zero")
        if isinstance(node.op, ast.Mult) and len(str(abs(a))) + len(str(abs(b))) > MAX_DIGITS:
            raise ToolError(f"result over {MAX_DIGITS} digits")
        return _OPS[type(node.op)](a, b)
    raise ToolError("only integers and + - * // % ( ) are allowed")


@environment("calc")
class Calc(ToolEnvironment):
    default_tool, default_argument = "calc", "expression"

    def __init__(self, empty_call: bool = True):
        self.empty_call = empty_call
        self.question = ""

    def reset(self, task: dict) -> str:
        self.question = str(task.get("expression") or str(task.get("prompt", "")).split("=")[0])
        return ""

    def tools(self):
        return {"calc": self.calc}

    def calc(self, expression: str = "") -> str:
        expression = str(expression).strip()
        if not expression and self.empty_call:
            expression = self.question
        if not expression:
            raise ToolError("empty expression")
        return str(evaluate(expression))


def rows(n: int, a: tuple[int, int] = (10, 99), b: tuple[int, int] = (2, 9), op: str = "%",
         seed: int = 0) -> list[dict]:
    """Random `a op b` tasks: `prompt` "a op b=\\boxed{", `expression`, `reference` the exact value.
    The default, remainders of two-digit numbers by one-digit ones ("73%8", answers 0..8, "0"
    a quarter of the time), is what `python -m environments.calc` writes; the built-in
    `data.source=calc` is `remainders`."""
    if op not in ("%", "*", "+", "-", "//"):
        raise ValueError(f"op must be one of % * + - //, got {op!r}")
    rng = random.Random(seed)
    out = []
    for i in range(n):
        x, y = rng.randint(*a), rng.randint(*b)
        expr = f"{x}{op}{y}"
        out.append({"prompt": f"{expr}={BOXED}", "expression": expr, "reference": str(evaluate(expr)),
                    "data_source": "calc", "id": f"calc-{i}"})
    return out


def remainders(n: int, seed: int = 0, a_max: int = 199, b: tuple[int, int] = (11, 19)) -> list[dict]:
    """The built-in `data.source=calc` set: "157%13" (x <= a_max, b in 11..19), the answer drawn
    first, uniformly over 0..9, then b, then x = q*b + answer. Uniform answers: a constant guess
    pays 0.1 (remainders by random one-digit numbers are 0 a quarter of the time, and a tiny
    policy collapsed onto "0" before it learned to read the tool); b >= 11 keeps the answer
    independent of b and out of x's last digit (x%10 would be copying from the prompt). ~1,300
    distinct pairs: too many to learn by heart in a short run, and the model cannot divide; the
    answer is one token, to copy from the tool's response."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        r, d = rng.randrange(10), rng.randint(*b)
        x = d * rng.randint(1, (a_max - r) // d) + r
        expr = f"{x}%{d}"
        out.append({"prompt": f"{expr}={BOXED}", "expression": expr, "reference": str(r),
                    "data_source": "calc", "id": f"calc-{i}"})
    return out


def dataset(n: int, seed: int = 0):
    import datasets

    return datasets.Dataset.from_list(remainders(n, seed=seed))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1000)
    ap.add_argument("--a", type=int, nargs=2, default=(10, 99), metavar=("MIN", "MAX"))
    ap.add_argument("--b", type=int, nargs=2, default=(2, 9), metavar=("MIN", "MAX"))
    ap.add_argument("--op", choices=("%", "*", "+", "-", "//"), default="%")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    with open(a.out, "w") as f:
        for r in rows(a.rows, tuple(a.a), tuple(a.b), a.op, a.seed):
            f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()

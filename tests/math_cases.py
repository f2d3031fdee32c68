"""Labelled math answer pairs for the `math` reward: (reference, boxed answer, equal?).

Grouped by the normalisation policy point they test (rewards/math_normalize.py). Used by
tests/test_rewards_math.py and bench/math_reward.py.
"""

CASES = {
    "numbers": [
        ("4", "4", True), ("-7", "-7", True), ("2", "-2", False), ("10", "10.0", True),
        ("3", "3.0001", False), ("0.25", "\\frac14", True), ("1.5", "\\frac{3}{2}", True),
        ("100", "10^2", True), ("2^{10}", "1024", True), ("\\infty", "\\infty", True),
        ("-\\frac{1}{3}", "\\frac{-1}{3}", True), ("\\frac{1}{2}", "\\frac{1}{3}", False),
    ],
    "expressions": [
        ("\\frac{1}{2}", "0.5", True), ("\\frac{3}{4}", "\\dfrac{3}{4}", True),
        ("\\sqrt{2}/2", "\\frac{\\sqrt{2}}{2}", True), ("2\\sqrt{3}", "\\sqrt{12}", True),
        ("x^2+2x+1", "(x+1)^2", True), ("\\frac{\\pi}{3}", "\\pi/3", True),
        ("e^{2}", "e^2", True), ("x+1", "x-1", False),
    ],
    "percent": [
        ("50\\%", "50", True), ("50", "50\\%", True), ("12.5\\%", "12.5", True),
        ("50\\%", "50%", True), ("50\\%", "0.5", False), ("50\\%", "5", False),
    ],
    "units": [
        ("5", "5\\text{ cm}", True), ("5\\text{ cm}", "5", True), ("12", "12 \\mathrm{m}", True),
        ("5", "\\$5", True), ("30", "30^\\circ", True), ("5", "6\\text{ cm}", False),
    ],
    "thousands": [
        ("1000", "1,000", True), ("1000000", "1,000,000", True),
        ("1234567", "1{,}234{,}567", True), ("1000", "1\\,000", True),
        ("1000", "1,001", False), ("12", "1,2", False),
    ],
    "equation": [
        ("3", "x=3", True), ("x=3", "3", True), ("-2", "x = -2", True), ("3", "x=4", False),
    ],
    "intervals": [
        ("(1,2]", "(1,2]", True), ("(1,2]", "[1,2]", False), ("[0,\\infty)", "[0,\\infty)", True),
        ("(-\\infty, 3)", "(-\\infty,3)", True), ("x\\in(1,2]", "(1,2]", True),
        ("(1,2)", "(1,3)", False),
    ],
    "sets_tuples": [
        ("\\{1,2\\}", "\\{2,1\\}", True), ("(1,2)", "(2,1)", False),
        ("\\{1,2\\}", "(1,2)", False), ("(1,2)", "\\{1,2\\}", False), ("(3,4)", "(3, 4)", True),
        ("1,2", "2,1", True), ("\\{1,2,3\\}", "\\{1,2\\}", False),
    ],
    "choices": [
        ("B", "\\text{(B)}", True), ("(B)", "B", True), ("B", "\\textbf{B}", True),
        ("C", "(C) 12", True), ("B", "C", False), ("\\text{(D)}", "A", False),
        ("B", "12", False),
    ],
}

# Inputs built to hang or blow up a verdict: each must score 0 within the reward's limit.
ADVERSARIAL = {
    "power_tower": ("4", "\\boxed{2^{2^{2^{2^{2^{2^{2^{2}}}}}}}}"),
    "power_tower_9": ("1", "\\boxed{9^{9^{9^{9^{9}}}}}"),
    "huge_factorial": ("1", "\\boxed{(10^{10})!}"),
    "megabyte_in_box": ("2", "\\boxed{" + "1+" * 500_000 + "1}"),
    "megabyte_unclosed": ("2", "\\boxed{1" * 150_000),
    "megabyte_no_box": ("2", "a" * 1_000_000),
    "deep_parens": ("1", "\\boxed{" + "(" * 450 + "1" + ")" * 450 + "}"),
    "deep_frac": ("2", "\\boxed{" + "\\frac{1}{" * 90 + "1" + "}" * 90 + "}"),
    "deep_sqrt": ("2", "\\boxed{" + "\\sqrt{" * 120 + "2" + "}" * 120 + "}"),
}

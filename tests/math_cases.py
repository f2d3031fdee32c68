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

# Exact values floats cannot hold apart (issue 14): math-verify's float comparisons (rounding to
# 6 decimals, evalf with chop) called every `False` pair here equal. (reference, answer, equal?)
EXACT = {
    "tiny": [
        ("2^{-2000}", "3^{-2000}", False), ("\\frac{1}{1000!}", "\\frac{1}{1001!}", False),
        ("\\frac{1}{2^{100}}", "\\frac{1}{3^{100}}", False), ("10^{-7}", "0.0000002", False),
        ("0.0000001", "0.0000002", False), ("e^{-1000}", "0.0000001", False),
        ("e^{-1000}", "0.000000", False), ("(2^{-2000}, 1)", "(3^{-2000}, 1)", False),
        ("\\{2^{-2000}\\}", "\\{3^{-2000}\\}", False), ("[2^{-2000}, 1]", "[3^{-2000}, 1]", False),
        ("x=2^{-2000}", "x=3^{-2000}", False),
        ("2^{-2000}", "\\frac{1}{4^{1000}}", True), ("\\frac{1}{1000!}", "\\frac{1001}{1001!}", True),
        ("10^{-7}", "0.0000001", True),
    ],
    "huge": [
        ("10^{400}", "10^{400}+1", False), ("2^{1024}", "2^{1024}+1", False),
        ("1000!", "1001!", False), ("\\frac{1000!}{998!}", "999001", False),
        ("\\frac{3^{1000}}{2^{1000}}", "\\frac{3^{1000}+1}{2^{1000}}", False),
        ("\\frac{1000!}{998!}", "999000", True), ("2^{1024}", "4^{512}", True),
        ("10^{400}", "100^{200}", True),
    ],
    "near_equal": [
        ("\\sqrt{2}+10^{-20}", "\\sqrt{2}", False), ("\\pi+10^{-30}", "\\pi", False),
        ("\\pi", "\\pi(1+10^{-50})", False), ("e^{\\pi\\sqrt{163}}", "640320^3+744", False),
        ("\\frac{10^{20}+1}{10^{20}}", "1", False), ("1", "1.0000001", False),
        ("\\frac{1}{2}", "0.5000001", False), ("2^{-1}", "0.5000001", False),
        ("\\frac{1}{3}", "0.3333334", False), ("0.5+10^{-20}", "0.5", False),
        ("x+10^{-20}", "x", False),
        ("\\frac{1}{3}", "0.333333", True), ("\\frac{1}{7}", "0.142857", True),
        ("\\sqrt{2}", "1.414214", True), ("1000\\pi", "3141.592654", True),
        ("\\sqrt{3+2\\sqrt{2}}", "1+\\sqrt{2}", True), ("1.5\\sqrt{2}", "\\frac{3\\sqrt{2}}{2}", True),
        ("(0.5, \\frac{1}{3})", "(\\frac{1}{2}, 0.333333)", True),
    ],
}

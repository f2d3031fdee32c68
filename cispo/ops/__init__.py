"""Numerical kernels shared by the learner and the rollout engines (a leaf package)."""

"""cispo: RL training for LLMs with CISPO, the algorithm behind MiniMax-M1.

`python -m cispo.train +exp=tiny` runs the loop; `cispo.loss.policy_loss` is the loss API.
"""

__version__ = "0.1.0"

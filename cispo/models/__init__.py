"""Model building: the tiny offline hybrid MiniMax + tokenizer, and loading any HF causal LM.

A leaf package: imports nothing else of ours, so `rollout` may use it too.
"""

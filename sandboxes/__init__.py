"""Docker sandboxes: the offline image, the engine connection, warm scoring workers.

Everything model-written runs here, with `--network none`, memory/pid limits and a wall-clock
kill from outside. Nothing in this package imports `cispo`, `rollout` or `rewards`.
"""

"""The fork task's reward for the real loop (`reward.modules=[bench/fork_reward.py]`,
conf/exp/ablation_fork.yaml): 1 for "<wait>" + the right sum + "}", else 0. The extra number
`fork` (1 when the answer opens with the marker) is logged per step as `reward/fork/fork`: the
sampled frequency of the rare token. Kept free of heavy imports: reward workers import it."""

from rewards.registry import reward

MARKER = "<wait>"  # bench/fork_task.py's marker token


@reward("fork")
def fork(completion: str, reference) -> dict:
    body = completion[len(MARKER):] if completion.startswith(MARKER) else None
    right = body is not None and "}" in body and body.split("}")[0] == str(reference)
    return {"score": float(right), "fork": float(body is not None)}

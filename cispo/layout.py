"""The learner's rank layout, from the one `parallel` config group.

`learner_layout(learner_cfg, parallel_cfg)` is what `LearnerGroup` builds its ranks from and what
the planner (`plan=true`) plans; both call it, so a plan describes the learner that would run.
`layout_problems` says, in the config's own key names, why a layout cannot be built; the
start-up checks (`cispo.config_check.value_problems`) report them before anything starts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

PLACEMENTS = ("separate", "colocated")


@dataclass(frozen=True)
class RankLayout:
    """How the learner's ranks share the work. Ranks r .. r+sp-1 form one sequence-parallel
    group (they hold the same items and split each packed row); the groups split the items
    (data parallel). Expert parallelism cuts across both: each MoE layer's experts are split
    over `expert_parallel` ranks (DeepSpeed AutoEP)."""

    ranks: int
    expert_parallel: int  # 1 = off
    sequence_parallel: int  # 1 = off
    micro_batch_tokens: int  # 0 = padded rows of learner.micro_batch_size

    @property
    def data_parallel(self) -> int:
        return self.ranks // self.sequence_parallel

    def shards(self, items: list) -> list[list]:
        """Each rank's items: its data-parallel group's contiguous share."""
        per = -(-len(items) // self.data_parallel)
        sp = self.sequence_parallel
        return [items[(r // sp) * per:(r // sp + 1) * per] for r in range(self.ranks)]


def layout_problems(ranks: int, parallel: Any) -> list[str]:
    """Why `parallel` cannot be laid out on `ranks` learner ranks (empty: it can)."""
    ep, sp, mbt = parallel.expert_parallel, parallel.sequence_parallel, parallel.micro_batch_tokens
    out = []
    for key, size in (("expert_parallel", ep), ("sequence_parallel", sp)):
        if size < 1:
            out.append(f"parallel.{key}={size}: use 1 for off")
        elif ranks % size:
            out.append(f"parallel.{key}={size} must divide learner.num_workers={ranks}")
    if mbt < 0:
        out.append(f"parallel.micro_batch_tokens={mbt}: use 0 for padded rows")
    if sp > 1 and mbt <= 0:
        out.append("parallel.sequence_parallel > 1 splits packed rows: set parallel.micro_batch_tokens")
    if parallel.placement not in PLACEMENTS:
        out.append(f"parallel.placement={parallel.placement!r}: use one of {', '.join(PLACEMENTS)}")
    return out


def learner_layout(learner: Any, parallel: Any) -> RankLayout:
    """The layout of `learner.num_workers` ranks under `parallel`; ValueError if it has none."""
    if problems := layout_problems(learner.num_workers, parallel):
        raise ValueError("; ".join(problems))
    return RankLayout(learner.num_workers, parallel.expert_parallel, parallel.sequence_parallel,
                      parallel.micro_batch_tokens)

"""The planner's arithmetic against instantiated models, and the m1_80k plan (issue 6, point 1)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from cispo.config import ModelConfig, TinyModelConfig
from cispo.planner import build_plan, place, run_plan
from cispo.planner_memory import (
    DTYPE_BYTES,
    LearnerLayout,
    kv_bytes_per_token,
    lightning_state_bytes,
    zero_states,
)
from cispo.planner_model import PlanError, param_counts, resolve_config, shape_of

ROOT = Path(__file__).resolve().parent.parent
CONF = ROOT / "conf"


def config(*overrides: str):
    with initialize_config_dir(str(CONF), version_base=None):
        return compose("config", overrides=list(overrides))


def counted(model) -> tuple[int, int]:
    """(total, active) by walking the instantiated model: experts count top_k / num_experts,
    the embedding and the output head do not count as active."""
    c = model.config
    total = active = 0
    for name, p in model.named_parameters():
        total += p.numel()
        if name.startswith("model.embed_tokens") or name.startswith("lm_head"):
            continue
        share = c.num_experts_per_tok / c.num_local_experts if ".experts." in name else 1.0
        active += p.numel() * share
    return total, int(round(active))


def tiny_model(**kw):
    from transformers import MiniMaxForCausalLM

    m = OmegaConf.structured(ModelConfig(tiny=TinyModelConfig(**kw)))
    return MiniMaxForCausalLM(resolve_config(m))


SHAPES = [
    {},  # the tiny demo model
    {"hidden_size": 96, "num_layers": 8, "softmax_every": 8, "num_heads": 6, "num_kv_heads": 2,
     "num_experts": 8, "experts_per_token": 2, "expert_ffn": 40, "block_size": 8},
    {"hidden_size": 32, "num_layers": 3, "softmax_every": 3, "num_heads": 2, "num_kv_heads": 1,
     "num_experts": 3, "experts_per_token": 1, "expert_ffn": 24},
    {"hidden_size": 48, "num_layers": 2, "softmax_every": 1, "num_heads": 4, "num_kv_heads": 4,
     "num_experts": 2, "experts_per_token": 2, "expert_ffn": 16},  # softmax only
]


@pytest.mark.parametrize("kw", SHAPES)
def test_param_counts_match_instantiated_minimax(kw):
    model = tiny_model(**kw)
    pc = param_counts(shape_of(model.config))
    assert (pc.total, pc.active) == counted(model)
    assert pc.embedding == model.model.embed_tokens.weight.numel()
    assert pc.head == model.lm_head.weight.numel()


def test_param_counts_match_instantiated_dense_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    for tied in (False, True):
        cfg = LlamaConfig(vocab_size=101, hidden_size=64, intermediate_size=88, num_hidden_layers=3,
                          num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=tied)
        model = LlamaForCausalLM(cfg)
        pc = param_counts(shape_of(cfg))
        assert pc.total == sum(p.numel() for p in model.parameters())
        assert pc.active == pc.total - pc.embedding - pc.head


def test_m1_shape_counts_match_a_meta_model_and_the_report():
    from transformers import MiniMaxForCausalLM

    cfg = resolve_config(OmegaConf.structured(ModelConfig(name="MiniMaxAI/MiniMax-M1-80k-hf")))
    pc = param_counts(shape_of(cfg))
    with torch.device("meta"):
        model = MiniMaxForCausalLM(cfg)
    assert (pc.total, pc.active) == counted(model)
    assert abs(pc.total / 456e9 - 1) < 0.02
    assert abs(pc.active / 45.9e9 - 1) < 0.03


def test_memory_terms_by_hand():
    shape = shape_of(resolve_config(OmegaConf.structured(ModelConfig(name="MiniMaxAI/MiniMax-M1-80k-hf"))))
    assert kv_bytes_per_token(shape, 2) == 10 * 2 * 8 * 128 * 2  # 10 softmax layers, K and V
    assert lightning_state_bytes(shape) == 70 * 64 * 128 * 128 * 4  # FP32 state per sequence
    pc = param_counts(shape)
    lay = LearnerLayout(ranks=256, zero_stage=3, dtype_bytes=DTYPE_BYTES["bfloat16"],
                        expert_parallel=32, sequence_parallel=8, tokens_per_micro_batch=83968,
                        head_chunk_tokens=2048, checkpointing=True, prefetch_layers=2)
    z = zero_states(pc, lay)
    assert sum(z.values()) == pytest.approx(pc.total * 16 / 256)  # ZeRO paper: 2 + 2 + 12 bytes
    z1 = zero_states(pc, LearnerLayout(**{**lay.__dict__, "zero_stage": 1}))
    assert z1["params"] == pc.total * 2 and z1["optimizer"] == z["optimizer"]


def test_placement_packs_whole_and_shared_gpus():
    used, problems = place(4, [("learner0", 1.0), ("engine0", 2.0), ("a", 0.5), ("b", 0.5)])
    assert used == [["learner0"], ["engine0"], ["engine0"], ["a", "b"]] and not problems
    _, problems = place(2, [("engine0", 2.0), ("engine1", 2.0)])
    assert "no room for engine1" in problems[0]


def test_m1_80k_plan_meets_the_issue(tmp_path):
    plan = run_plan(config("+exp=m1_80k", f"run_dir={tmp_path}"))
    on_disk = json.loads((tmp_path / "plan.json").read_text())
    assert on_disk == json.loads(json.dumps(plan))
    assert plan["gpus"] == 512 and plan["nodes"] == 64
    assert abs(plan["model"]["total_params"] / 456e9 - 1) < 0.02
    assert abs(plan["model"]["active_params"] / 45.9e9 - 1) < 0.03
    assert plan["learner"]["per_gpu_memory_gib"] <= 80
    assert plan["rollout"]["per_gpu_memory_gib"] <= 80
    assert plan["max_gpu_memory_gib"] <= 80
    assert plan["fits"] is True and plan["problems"] == []


@pytest.mark.parametrize("exp", ["m1_40k", "small_gpu", "tiny"])
def test_other_experiments_plan_and_fit(exp, tmp_path):
    plan = build_plan(config(f"+exp={exp}", f"run_dir={tmp_path}"))
    assert plan["fits"], plan["problems"]


def test_a_plan_that_does_not_fit_names_the_term_and_the_fix():
    plan = build_plan(config("+exp=m1_80k", "parallel.rollout_pipeline_parallel=1",
                             "rollout.num_workers=32"))
    assert not plan["fits"]
    assert any("rollout:" in p and "largest term weights" in p
               and "parallel.rollout_tensor_parallel" in p for p in plan["problems"])
    plan = build_plan(config("+exp=m1_80k", "learner.num_workers=64", "parallel.expert_parallel=32"))
    assert any("learner:" in p and "largest term optimizer" in p and "learner.num_workers" in p
               for p in plan["problems"])
    plan = build_plan(config("+exp=m1_80k", "learner.num_workers=512"))
    assert any("no room for" in p for p in plan["problems"])


def test_unplannable_configs_are_one_clear_message():
    with pytest.raises(PlanError, match="cannot hold one sequence of 83968 tokens"):
        build_plan(config("+exp=m1_80k", "parallel.micro_batch_tokens=4096"))
    with pytest.raises(PlanError, match="needs the model's config.json"):
        build_plan(config("+exp=m1_80k", "model.name=/nonexistent/model"))


def test_plan_cli_prints_a_table_and_writes_plan_json(tmp_path):
    p = subprocess.run([sys.executable, "-m", "cispo.planner", "+exp=m1_80k", f"run_dir={tmp_path}"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "fits: True" in p.stdout and "kv_cache" in p.stdout and "456.09B params" in p.stdout
    assert json.loads((tmp_path / "plan.json").read_text())["gpus"] == 512


def test_train_plan_true_trains_nothing(tmp_path):
    p = subprocess.run([sys.executable, "-m", "cispo.train", "+exp=m1_80k", "plan=true",
                        f"run_dir={tmp_path}"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    assert (tmp_path / "plan.json").exists() and not (tmp_path / "metrics.jsonl").exists()


def test_docs_planner_examples_run(monkeypatch):
    import re

    monkeypatch.chdir(ROOT)
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "docs" / "planner.md").read_text(), flags=re.S)
    assert blocks
    for code in blocks:
        exec(compile(code, "docs/planner.md", "exec"), {})


def test_docs_list_every_new_config_key():
    text = (ROOT / "docs" / "configuration.md").read_text()
    for section in ("cluster", "parallel", "schedule"):
        for key in OmegaConf.to_container(OmegaConf.structured(config()[section])):
            assert f"`{section}.{key}`" in text, f"{section}.{key}"


def test_compare_with_measured():
    from cispo.planner import compare_with_measured

    r = compare_with_measured({"learner": {"per_gpu_memory_gib": 10.5}}, 10.0)
    assert r["relative_error"] == pytest.approx(0.05) and r["within_10_percent"]


def test_sequence_parallel_buffers_by_hand():
    from cispo.planner_memory import sequence_parallel_buffers

    shape = shape_of(resolve_config(OmegaConf.structured(ModelConfig(name="MiniMaxAI/MiniMax-M1-80k-hf"))))
    lay = LearnerLayout(ranks=256, zero_stage=3, dtype_bytes=2, expert_parallel=32, sequence_parallel=8,
                        tokens_per_micro_batch=83968, head_chunk_tokens=2048, checkpointing=True,
                        prefetch_layers=2)
    # K, V gathered (8 KV heads) + their grads, K/V repeated to 64 heads + grads; 8 gathered states x2
    kv = 83968 * 2 * 2 * (2 * 8 * 128 + 2 * 64 * 128)
    assert sequence_parallel_buffers(shape, lay)["sp_buffers"] == kv + 2 * 8 * 64 * 128 * 128 * 4
    one = LearnerLayout(**{**lay.__dict__, "sequence_parallel": 1})
    assert sequence_parallel_buffers(shape, one)["sp_buffers"] == 0.0


def test_m1_80k_names_the_sequence_parallel_size_it_needs():
    plan = build_plan(config("+exp=m1_80k"))
    lr = plan["learner"]
    assert lr["sequence_parallel"] == 8 and plan["fits"]
    need = lr["sequence_parallel_needed"]
    assert need is not None and need <= 8 and 256 % need == 0
    at_need = build_plan(config("+exp=m1_80k", f"parallel.sequence_parallel={need}"))
    assert at_need["fits"] and at_need["learner"]["per_gpu_memory_gib"] <= 80
    if need > 1:  # the next smaller divisor does not fit, and the message says what to raise
        smaller = max(d for d in range(1, need) if 256 % d == 0)
        below = build_plan(config("+exp=m1_80k", f"parallel.sequence_parallel={smaller}"))
        assert not below["fits"]
        assert any("parallel.sequence_parallel" in p for p in below["problems"])
    # SP splits the activations: per-rank tokens and the activation terms shrink with the size
    t4 = build_plan(config("+exp=m1_80k", "parallel.sequence_parallel=4"))["learner"]["terms_gib"]
    t8 = lr["terms_gib"]
    assert t8["checkpoints"] == pytest.approx(t4["checkpoints"] / 2, rel=1e-3)
    from cispo.planner import format_plan

    assert f"sequence parallel: SP {need} is the smallest size" in format_plan(plan)


def test_colocated_engines_share_the_learner_gpus():
    sep = build_plan(config("+exp=small_gpu", "rollout.num_gpus_per_worker=1", "learner.num_gpus_per_worker=1",
                            "cluster.gpus_per_node=2", "parallel.placement=separate"))
    col = build_plan(config("+exp=small_gpu", "rollout.num_gpus_per_worker=1", "learner.num_gpus_per_worker=1",
                            "cluster.gpus_per_node=2", "parallel.placement=colocated"))
    assert (sep["gpus"], col["gpus"]) == (2, 1) and col["rollout"]["placement"] == "colocated"
    # one GPU, two turns: the larger of (learner + the sleeping engine's weights) and
    # (engine + the learner's parameters, gradients, optimizer), one reserve
    lt, et = col["learner"]["terms_gib"], col["rollout"]["terms_gib"]
    both = max(sum(lt.values()) + et["weights"],
               sum(et.values()) + lt["params"] + lt["grads"] + lt["optimizer"]) - et["reserve"]
    assert col["max_gpu_memory_gib"] == pytest.approx(both, abs=0.01)
    too_many = build_plan(config("+exp=small_gpu", "rollout.num_gpus_per_worker=1", "rollout.num_workers=2",
                                 "learner.num_gpus_per_worker=1", "cluster.gpus_per_node=2",
                                 "parallel.placement=colocated"))
    assert any("parallel.placement=colocated" in p for p in too_many["problems"])


def test_sandboxes_are_planned_where_the_run_places_them():
    """Scorer actors on the CPU nodes with sandbox.placement=actors (m1_80k); in the trainer's
    process on the driver's node with local, where CPU nodes would sit idle (issue 20)."""
    sb = build_plan(config("+exp=m1_80k"))["sandbox"]
    assert sb["placement"] == "actors" and sb["placed_on"] == "cpu nodes"
    assert sb["scorers"] == 8 and sb["slots_per_node"] == 64 and sb["containers_per_node"] == 64
    plan = build_plan(config("+exp=m1_80k", "sandbox.placement=local"))
    assert plan["sandbox"]["placed_on"] == "the driver's node" and not plan["fits"]
    assert any("sandbox.placement=local scores in the trainer's process" in p for p in plan["problems"])
    plan = build_plan(config("+exp=m1_80k", "cluster.cpu_nodes=0"))
    assert any("cluster.cpu_nodes=0 plans none" in p for p in plan["problems"])
    plan = build_plan(config("+exp=m1_80k", "sandbox.num_workers=1024"))
    assert any("128 CPUs per CPU node" in p for p in plan["problems"])
    tiny = build_plan(config("+exp=tiny"))["sandbox"]
    assert tiny["placed_on"] == "the driver's node" and tiny["scorers"] == 0


# --- issue 21: a plan that does not fit ends with one summary, the smallest change that fits,
# --- and exit status 1; the README's real-model command plans for real ---------------------

def _readme_commands(section: str) -> list[list[str]]:
    import shlex

    text = (ROOT / "README.md").read_text().split(f"## {section}", 1)[1].split("\n## ", 1)[0]
    cmds = []
    for block in text.split("```")[1::2]:
        joined = block.replace("\\\n", " ")
        cmds += [shlex.split(ln.removeprefix("$ ")) for ln in joined.splitlines()
                 if ln.lstrip("$ ").startswith("python -m cispo.train")]
    return cmds


def _plan(args: list[str], tmp_path) -> subprocess.CompletedProcess:
    assert args[:3] == ["python", "-m", "cispo.train"]
    args = [a for a in args[3:] if a != "plan=true"]
    return subprocess.run([sys.executable, "-m", "cispo.train", *args, "plan=true", f"run_dir={tmp_path}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_readme_real_model_command_gives_a_meaningful_plan(tmp_path):
    first, *_ = _readme_commands("A real model and dataset")
    r = _plan(first, tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert plan["fits"] and plan["gpus"] == 512 and plan["gpu_memory_gib"] == 80
    assert plan["model"]["name"] == "MiniMaxAI/MiniMax-M1-40k-hf"
    assert 10 < plan["learner"]["per_gpu_memory_gib"] <= 80 and 10 < plan["rollout"]["per_gpu_memory_gib"] <= 80
    assert "fits: True (budget 80 GiB/GPU" in r.stdout
    # the half-cluster variant the README quotes, with the change it names
    half = first + ["cluster.nodes=32", "learner.num_workers=128", "rollout.num_workers=8"]
    r = _plan(half, tmp_path)
    assert r.returncode == 1
    assert "short by 10.2 GiB per GPU; smallest change that fits: parallel.sequence_parallel=16" in r.stdout
    readme = (ROOT / "README.md").read_text()
    assert "smallest change that fits: parallel.sequence_parallel=16" in readme
    assert _plan(half + ["parallel.sequence_parallel=16"], tmp_path).returncode == 0


def test_a_gpu_run_planned_without_gpus_does_not_fit(tmp_path):
    """The README's old real-model command: tiny's batch sizes, 80 GPUs asked, a cluster of none;
    it printed 643,408 GiB per GPU and "fits"."""
    r = _plan(["python", "-m", "cispo.train", "+exp=tiny", "model.name=MiniMaxAI/MiniMax-M1-40k-hf",
               "model.dtype=bfloat16", "rollout.max_new_tokens=40960", "learner.num_workers=64",
               "learner.num_gpus_per_worker=1", "rollout.num_workers=16", "rollout.num_gpus_per_worker=1"],
              tmp_path)
    assert r.returncode == 1 and "fits: False" in r.stdout
    assert "the run asks for 80 GPUs" in r.stdout and "cluster.gpus_per_node=0" in r.stdout


def test_not_fitting_summary_is_short_names_the_smallest_fitting_change_and_no_advice_in_force(tmp_path):
    from cispo.planner import format_plan
    from cispo.planner_advice import changes_that_fit

    cfg = config("+exp=m1_80k", "learner.num_workers=64", "parallel.expert_parallel=32",
                 "parallel.rollout_pipeline_parallel=1", "rollout.num_workers=32")
    plan = build_plan(cfg)
    plan["changes_that_fit"] = changes_that_fit(cfg, plan)
    text = format_plan(plan).split("fits: False", 1)[1]
    assert "zero_stage" not in text  # ZeRO-3 is in force: never advise zero_stage>=1
    causes = text.split("\n  - ")[1:]
    assert len(causes) == 2 and all(len(c.splitlines()) <= 3 for c in causes)
    [learner] = [c for c in causes if c.startswith("learner:")]
    change = plan["changes_that_fit"]["learner"][0]
    assert f"smallest change that fits: {change}" in learner and "short by" in learner
    key, value = change.split("=")
    fixed = build_plan(config("+exp=m1_80k", "learner.num_workers=64", "parallel.expert_parallel=32",
                              "parallel.rollout_pipeline_parallel=1", "rollout.num_workers=32", change))
    assert fixed["learner"]["per_gpu_memory_gib"] <= 80  # it does fit
    # and it is the smallest: the value before it does not
    if key == "learner.num_workers":
        smaller = build_plan(config("+exp=m1_80k", f"learner.num_workers={int(value) // 2}",
                                    "parallel.expert_parallel=32"))
        assert smaller["learner"]["per_gpu_memory_gib"] > 80


def test_checkpointing_already_on_is_not_advised():
    from cispo.planner_advice import advice

    cfg = config("+exp=m1_80k", "learner.gradient_checkpointing=true")
    assert "gradient_checkpointing" not in advice("layer_recompute", cfg)
    assert "gradient_checkpointing" in advice("layer_recompute", config("+exp=m1_80k",
                                                                        "learner.gradient_checkpointing=false"))


def test_selective_checkpointing_fewest_layers_that_fit():
    """Recomputing k of L layers keeps k layer inputs and L − k + 1 layers' activations; the plan
    names the fewest k that fit (0 when everything fits, None when even all do not)."""
    import dataclasses

    from cispo.planner import fewest_checkpoint_layers
    from cispo.planner_memory import LearnerLayout, activations, learner_terms
    from cispo.planner_model import Shape, param_counts

    s = Shape(vocab=1000, hidden=64, layers=8, softmax_layers=1, heads=4, kv_heads=2, head_dim=16,
              experts=4, top_k=2, ffn=64, tied_head=False, block_size=16, minimax=True)
    lay = LearnerLayout(ranks=1, zero_stage=3, dtype_bytes=2, expert_parallel=1, sequence_parallel=1,
                        tokens_per_micro_batch=4096, head_chunk_tokens=0, checkpointing=True, prefetch_layers=2)
    full, three = activations(s, lay), activations(s, dataclasses.replace(lay, checkpoint_layers=3))
    none = activations(s, dataclasses.replace(lay, checkpointing=False))
    per_layer = none["layer_recompute"] / 8
    assert three["checkpoints"] == pytest.approx(full["checkpoints"] * 3 / 8)
    assert three["layer_recompute"] == pytest.approx(6 * per_layer)
    assert full["layer_recompute"] == pytest.approx(per_layer)
    counts = param_counts(s)

    def total(k):
        return sum(learner_terms(s, counts, dataclasses.replace(lay, checkpointing=k > 0,
                                                               checkpoint_layers=k), 0.0).values())
    assert fewest_checkpoint_layers(s, counts, lay, 0.0, total(0) + 1) == 0
    assert fewest_checkpoint_layers(s, counts, lay, 0.0, total(5)) == 5
    assert fewest_checkpoint_layers(s, counts, lay, 0.0, total(8) - 1) is None

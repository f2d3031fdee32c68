"""The configuration schema: dataclasses registered with Hydra's ConfigStore.

Every key a run accepts is declared here, with its default and the unit or source of that
default. `conf/config.yaml` builds on this schema and `conf/exp/*.yaml` override it, so a
misspelt key fails at start (see `cispo.config_check`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING  # noqa: F401  (re-exported for experiment schemas)


@dataclass
class TinyModelConfig:
    """Shape of the built-in random hybrid MiniMax model (`model.name=tiny`): the M1 layout in
    miniature (lightning layers with one softmax layer after them, MoE MLPs)."""

    hidden_size: int = 64
    num_layers: int = 4
    # M1: one softmax layer after every 7 lightning layers; here after every `softmax_every - 1`.
    softmax_every: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2  # GQA in the softmax layers (M1: 64 heads, 8 KV heads)
    num_experts: int = 4  # M1: 32
    experts_per_token: int = 2  # M1: top-2
    expert_ffn: int = 128  # M1: 9216
    block_size: int = 16  # lightning attention block (M1: 256)
    max_positions: int = 256
    rope_theta: float = 10_000_000.0  # M1: 1e7
    init_seed: int = 0
    # add the tool-call tags (<tool_call>, </tool_call>, <tool_response>, </tool_response>) to the
    # tokenizer as single tokens: the multi-turn demo (+exp=tiny_tools, docs/environments.md)
    tool_tokens: bool = False


@dataclass
class ModelConfig:
    # "tiny": build a random tiny hybrid MiniMax + an offline tokenizer for the built-in task.
    # Anything else: a Hugging Face model id or local directory (`from_pretrained`).
    name: str = "tiny"
    tokenizer: str | None = None  # default: same as `name`
    dtype: str = "float32"  # float32 | bfloat16 (bf16 on GPU); allowed values: cispo/config_rules.py
    trust_remote_code: bool = False
    # M1: LM head in FP32 (forward and backward, no TF32): train/rollout probability correlation
    # 0.987 -> 0.997. Log-probs then come from chunked FP32 products, never T x V logits.
    fp32_lm_head: bool = True
    # M1 rotates 64 of 128 head dims; transformers' minimax rotates all. null: the model's own
    rotary_dim: int | None = None
    tiny: TinyModelConfig = field(default_factory=TinyModelConfig)


@dataclass
class DataConfig:
    # "arithmetic": the built-in synthetic task; "calc": remainders (73%8) for the calc
    # environment (env.name=calc; arithmetic_rows of them). Else a .jsonl/.json/.parquet path or a hub name.
    source: str = "arithmetic"
    split: str = "train"
    prompt_key: str = "prompt"
    # a Python format string over the row's columns that makes the prompt, e.g.
    # "Problem: {problem}\nPut the answer in \\boxed{{}}." (null: the prompt_key column as is);
    # rows missing a field it names are skipped and counted
    prompt_template: str | None = None
    reference_key: str = "reference"
    data_source_key: str = "data_source"
    default_data_source: str = "math"  # for rows without a data_source column
    max_prompt_tokens: int = 1024  # longer prompts are skipped and counted
    shuffle: bool = True
    seed: int = 0
    # ScaleRL's no-positive-resampling: a prompt whose samples pass (score >= pass_score) at a
    # rate >= retire_pass_rate in a step is left out of every later epoch (ScaleRL: 0.9);
    # null = off. The retired prompts are kept in checkpoints (exact resume).
    retire_pass_rate: float | None = None
    pass_score: float = 1.0  # the score a sample needs to count as passed (math reward: right)
    # built-in arithmetic task
    arithmetic_rows: int = 2000
    arithmetic_max_operand: int = 2  # operands drawn from 0..max_operand


@dataclass
class RolloutConfig:
    engine: str = "hf"  # registry name (rollout.engines): hf, graph (CUDA graphs), vllm
    num_workers: int = 2  # GenerationWorker Ray actors
    prompts_per_step: int = 64
    group_size: int = 8  # G samples per prompt (M1 report: 16 in later stages)
    max_new_tokens: int = 4096
    temperature: float = 1.0  # M1 sampled at 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    # M1's repetition early stop: end a response once this many consecutive sampled tokens each
    # had p > repetition_threshold (finish reason "repetition"); 0 = off
    repetition_window: int = 3000  # M1 report
    repetition_threshold: float = 0.99  # M1 report
    # reward given to repetition-stopped responses instead of scoring them; null = score them
    repetition_reward: float | None = 0.0  # default: treat as failed
    max_restarts: int = 3  # Ray restarts of a crashed generation worker (its prompts are resent)
    num_cpus_per_worker: float = 1.0  # Ray resources per worker
    num_gpus_per_worker: float = 0.0
    torch_threads: int = 1  # intra-op threads per worker on CPU
    # weight sync: the learner gathers (ZeRO-3) and ships the weights in buckets of this size
    sync_bucket_mb: float = 256.0  # MiB per bucket; bounds the full weights a learner rank holds
    # how the weights travel (cispo.placement): auto = CUDA IPC when colocated on GPUs, NCCL
    # broadcast when separate, the Ray object store on CPU; or object_store | ipc | broadcast
    # (on CPU: ipc = shared-memory files, broadcast = gloo)
    sync_transport: str = "auto"
    # parallel.placement=colocated: engines release their cache memory while the learner trains
    # (Engine.sleep/wake). false keeps it (and the graph engine's captured graphs) across steps,
    # for a GPU that holds both at once
    sleep_while_training: bool = True
    # off-policy: later steps' rollouts are generated while the learner trains (max_staleness
    # syncs older; CISPO's weight then uses the rollout's log-probs). `async` is a Python
    # keyword, hence the name.
    async_generation: bool = False
    # with async_generation: how many weight syncs old a rollout may be when it is trained on
    # (k-step off-policy; ScaleRL: 8). The rollout of step t samples with the weights after update
    # t - k, a fixed schedule, so runs repeat and resume exactly (cispo.staleness). 1 = one step
    max_staleness: int = 1
    # prompts decoded together per engine call (0 = all of a worker's prompts at once)
    max_prompts_per_batch: int = 0
    # MoE routing replay: the engine records each token's experts, the learner's forward uses
    # them instead of routing again (MiniMax MoE models; HF engine)
    routing_replay: bool = False
    # Ray placement group per engine (parallel.rollout_tensor_parallel x rollout_pipeline_parallel
    # bundles of the per-worker CPUs/GPUs, packed on one node): auto = with GPUs only, on, off
    placement_groups: str = "auto"
    # rollout.engine=graph: the engine's whole share of its GPU (weights, slot pool, activations)
    # as a fraction of the device memory; the pool takes what parallel.rollout_concurrency
    # sequences need up to that (our choice: half, leaving the rest to a colocated learner)
    gpu_memory_fraction: float = 0.5
    cuda_graphs: bool = True  # rollout.engine=graph: capture decode steps (false: eager, debugging)
    # extra vllm.LLM / engine settings for rollout.engine=vllm, e.g.
    # {gpu_memory_utilization: 0.85, colocated: true}
    vllm: dict[str, Any] = field(default_factory=dict)


@dataclass
class SandboxConfig:
    # docker: warm, hardened containers. process: local subprocesses with rlimits and NO
    # isolation: never chosen automatically; set it explicitly where Docker cannot run.
    backend: str = "docker"
    image: str = "cispo-sandbox:bookworm-1"  # built by `python -m sandboxes.image build`
    # warm scoring workers (containers); with placement=actors, in all, split over the scorers
    # by their slots
    num_workers: int = 2
    # memory = memory+swap limit per worker: MB (512), or Docker's size syntax (512m, 1g, 2GiB)
    memory_mb: Any = 512
    cpus: float = 1.0  # CPU quota per worker
    pids_limit: int = 64
    verdict_timeout_s: float = 10.0  # wall clock per verdict; over it the worker is killed+replaced
    start_timeout_s: float = 60.0  # a worker must answer its first ping within this
    # where the sandboxed rewards (math, code, swe; @reward(..., sandbox=True)) run. "local": in
    # the trainer's process, on its machine's Docker engine (one machine: the demo, the tests).
    # "actors": in scorer actors on the Ray nodes that advertise `resource`, each using its own
    # node's engine (a cluster; rewards.scorers, docs/launch.md). Our choice: local, so a single
    # machine needs no Ray resource set up; the cluster experiments (m1_*) set actors.
    placement: str = "local"
    # the Ray resource sandbox nodes advertise: `ray start --resources='{"sandbox": N}'`, N = the
    # reward calls a node runs at once (launch/ sets N = the node's CPUs / sandbox.cpus)
    resource: str = "sandbox"
    scorers_per_node: int = 1  # scorer actors per sandbox node; they split its N slots
    max_restarts: int = 3  # Ray restarts of a dead scorer (its calls in flight go elsewhere once)
    nodes_wait_s: float = 600.0  # how long the start waits for the first sandbox node to join


@dataclass
class LengthPenaltyConfig:
    """DAPO's overlong shaping, added to the score after the rewards (DAPO, Yu et al. 2025):
    0 up to `max_length - cache`, then falling linearly to -factor at `max_length`, -factor
    beyond. Needs each item's `response_length` (tokens)."""

    enabled: bool = False
    max_length: int = 4096  # tokens; DAPO: 20480 (16384 + 4096 cache)
    cache: int = 512  # tokens of the soft zone before max_length; DAPO: 4096
    factor: float = 1.0  # the penalty at and beyond max_length (DAPO: 1)


@dataclass
class RewardConfig:
    # data_source -> reward(s). A value is a reward name ("math"), a list of names (summed), or
    # {name: weight} (weighted sum), e.g. {"math": 1.0, "format": 0.1}. Rows whose data_source
    # is not here use `default` (same forms).
    sources: dict[str, Any] = field(default_factory=lambda: {"math": "math", "arithmetic": "math"})
    default: Any = "math"
    timeout_s: float = 30.0  # wall clock for one reward call, sandbox start included
    error_score: float = 0.0  # score of a call that raised or timed out (counted in metrics)
    max_concurrency: int = 8  # reward calls in flight (async rewards: coroutines at once)
    # a reward whose calls time out this many times in a row is stopped and the run ends with
    # one error (an always-hanging reward would otherwise cost timeout_s per sample); 0 = never
    max_consecutive_timeouts: int = 3
    # .py files whose @reward functions are registered before the sources are resolved
    modules: list[str] = field(default_factory=list)
    # per-reward settings, e.g. {"code": {"mode": "all"}, "math": {"timeout_s": 20}}:
    # timeout_s / error_score override the two above for that reward; the rest are passed to the
    # reward function as keyword arguments (and to its setup hook)
    options: dict[str, Any] = field(default_factory=dict)
    num_workers: int = 2  # worker processes for process-isolated rewards (killed at timeout_s)
    # address-space limit per worker process: MB or Docker's size syntax (8g); 0 = none
    worker_memory_mb: Any = 8192
    length_penalty: LengthPenaltyConfig = field(default_factory=LengthPenaltyConfig)


@dataclass
class AlgorithmConfig:
    loss: str = "cispo"  # registry name (cispo.loss)
    # r_hat = clip(r, 1 - eps_low, 1 + eps_high). M1 imposes no lower bound: eps_low=1 makes the
    # bound 0, which r never goes below. M1 tunes only eps_high and does not publish the value;
    # 0.28 is DAPO's clip-higher value, a common starting point.
    eps_low: float = 1.0
    eps_high: float = 0.28
    # token: divide by all unmasked tokens of the batch (M1). sample: mean over each response's
    # tokens, then over responses (grpo needs it; cispo + sample = M1's long-window variant).
    # prompt: mean over each prompt's tokens (all its responses), then over prompts (ScaleRL)
    normalization: str = "token"
    # further keyword arguments of the loss, e.g. {trust_region_mask: true} (cispo, Eq. 7) or
    # {dual_clip: 3.0} (ppo_clip); see docs/loss.md
    loss_options: dict[str, Any] = field(default_factory=dict)
    advantage: str = "group_norm"  # registry name (cispo.advantages)
    # .py files whose @register_loss / @register_advantage functions are registered before the
    # run starts, in the driver and in every learner rank (their text is sent to the ranks)
    modules: list[str] = field(default_factory=list)
    advantage_eps: float = 1e-6  # added to the group std
    # DAPO's dynamic sampling (M1 uses it): drop groups whose rewards are all equal and refill
    # with new prompts, up to max_sampling_rounds generation rounds per step
    dynamic_sampling: bool = False
    max_sampling_rounds: int = 3
    # off-policy rounds: minibatch updates per generation batch (M1: up to 16); each round's
    # IS-weight stats are logged as is/round_<k>/{mean,min,max,clip_frac}
    num_minibatches: int = 1
    # the pi_old in r = pi/pi_old: "learner" recomputes it before the update; "rollout" uses
    # the sampling engine's log-probs (the behaviour policy)
    old_logprobs: str = "learner"


@dataclass
class LearnerConfig:
    num_workers: int = 1  # DeepSpeed ranks (Ray actors)
    zero_stage: int = 3
    backend: str = "auto"  # auto: nccl with GPUs, gloo on CPU
    # sequences per forward/backward when parallel.micro_batch_tokens is 0 (padded rows)
    micro_batch_size: int = 64
    lr: float = 1e-6  # M1 report does not publish its LR; 1e-6 is common for 7B-30B RL
    beta1: float = 0.9  # M1: AdamW betas (0.9, 0.95)
    beta2: float = 0.95
    eps: float = 1e-15  # M1: gradients span 1e-18..1e-5; 1e-8 stalls training
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    gradient_checkpointing: bool = False
    # with gradient_checkpointing: how many decoder layers recompute their activations in backward
    # (-1: all; k: the k that hold the most, cispo.models.speed.checkpoint_layers). The plan's
    # learner.checkpoint_layers_needed is the fewest that fit the GPU (selective checkpointing)
    checkpoint_layers: int = -1
    # DeepSpeed AutoEP (with parallel.expert_parallel > 1): its routing preset and the regex of
    # the MoE blocks it replaces
    autoep_preset: str = "mixtral"  # AutoEP's routing preset; mixtral = MiniMax's routing
    autoep_layer_pattern: str = r"model\.layers\.\d+\.mlp"  # regex of the MoE blocks to replace
    # AutoEP's expert GEMMs: grouped_mm (torch._grouped_mm, gate and up apart: DeepSpeed's
    # default), fused_gate_up (one grouped GEMM for both) or loop (one GEMM per expert)
    grouped_mm_backend: str = "grouped_mm"
    # the FP32 head's log-prob pass: split_bf16 (fused Triton kernels, FP32-accurate from bf16
    # tensor-core products; the IEEE path on CPU), ieee (torch, IEEE FP32, TF32 off: the
    # reference, M1's FP32 head) or 3xtf32 (torch, three TF32 products per FP32 product)
    head_precision: str = "split_bf16"
    offload_optimizer: bool = False  # ZeRO-Offload: optimizer state + step on CPU
    offload_params: bool = False  # ZeRO-3 parameter offload to CPU
    # parallel.placement=colocated: move the optimizer state, FP32 master weights and gradients
    # to host memory while the engines generate (and back before training), so a GPU too small
    # for both still holds them in turn; costs two host<->GPU copies of that state per step
    offload_while_generating: bool = False
    num_cpus_per_worker: float = 1.0
    num_gpus_per_worker: float = 0.0
    torch_threads: int = 2
    master_port: int = 0  # 0 = pick a free port


@dataclass
class TrainerConfig:
    total_steps: int = 100
    save_every: int = 0  # steps between checkpoints; 0 = only at the end
    # Ctrl-C: finish the current step, checkpoint it, print the resume command (a second
    # Ctrl-C stops at once)
    save_on_interrupt: bool = True
    seed: int = 0


@dataclass
class LoggingConfig:
    wandb_mode: str = "auto"  # auto: online with WANDB_API_KEY set, else offline | disabled
    wandb_project: str = "cispo"
    wandb_entity: str | None = None
    progress: bool = True  # rich progress bar on the terminal
    # without a terminal (SLURM, nohup, a pipe): a plain progress line this often (seconds);
    # train.log gets every step's line either way
    progress_every_s: float = 30.0
    samples_per_step: int = 4  # completions logged per step to samples.jsonl and W&B (0 = none)
    # a step whose learner passes are profiled (torch.profiler, rank 0): the table of the
    # heaviest ops goes to run_dir/profile_learn_step<N>.txt; null = none
    profile_learn_step: int | None = None


@dataclass
class RayConfig:
    address: str | None = None  # None: start a local Ray; "auto": join the cluster
    num_cpus: int | None = None  # local Ray only; None = enough for the actors asked for


# --- issue 6: cluster description, parallel layout, staged window (read by cispo.planner and
# --- cispo.schedule). Appended; the fields above are unchanged.


@dataclass
class ClusterConfig:
    """The machines a run is planned for (`plan=true` places the run's actors on them)."""

    nodes: int = 1  # GPU nodes (M1: 64 nodes x 8 H800, report section 4)
    gpus_per_node: int = 0  # 0 = CPU only (a laptop); M1: 8
    gpu_memory_gib: float = 80.0  # per GPU, GiB (H800: 80 GB HBM3, the budget)
    cpus_per_node: int = 2  # CPUs per GPU node usable by Ray actors and sandboxes
    cpu_nodes: int = 0  # extra CPU-only nodes for sandbox containers (our choice; 0 = none)
    cpus_per_cpu_node: int = 64  # CPUs on each of those nodes
    cpu_node_memory_gib: float = 256.0  # memory of each CPU-only node, GiB
    # per GPU, GiB, on top of the estimated tensors: CUDA context, NCCL buffers, allocator
    # fragmentation (our choice; compare with a measured peak, docs/PERFORMANCE.md (planner section))
    reserve_gib: float = 2.0


@dataclass
class ParallelConfig:
    """The run's parallel layout, set here and nowhere else: the learner builds its rank groups
    from it (cispo.layout), the engines their model-parallel groups, and the planner
    (`plan=true`) sizes memory from the same keys. docs/design.md (parallel layout)."""

    # learner ranks sharing one MoE layer's experts: DeepSpeed AutoEP splits each layer's experts
    # over them (must divide learner.num_workers and the expert count); 1 = off (ZeRO-3 shards
    # the experts like any other weight). M1 trains with expert parallelism (report 3.x)
    expert_parallel: int = 1
    # learner ranks sharing one packed sequence (cispo.seqpar: LASP+ lightning state combine,
    # K/V all-gather for softmax layers); must divide learner.num_workers and needs
    # micro_batch_tokens > 0; 1 = off
    sequence_parallel: int = 1
    # >0: the learner packs sequences back to back (no padding; attention restarts at each
    # sequence) into micro-batches of at most this many tokens, all of a sequence-parallel
    # group's shards together; must hold the longest sequence. 0: learner.micro_batch_size
    # padded rows (the planner then counts micro_batch_size x the longest sequence)
    micro_batch_tokens: int = 0
    # tokens per chunk of the learner's FP32 LM-head log-prob op (the fused op's backward chunk;
    # the torch ops' tile); 0 = the op's default (fused: 2 GiB of bf16 logit gradients; torch:
    # 2^25 logits); the planner then assumes the whole micro-batch
    head_chunk_tokens: int = 0
    # ZeRO-3's working set: layers gathered at once (current + prefetched); the planner counts
    # it and the learner sizes DeepSpeed's prefetch/bucket sizes from it
    # (cispo.models.speed.zero3_tuning) (our choice)
    prefetch_layers: int = 2
    rollout_tensor_parallel: int = 1  # GPUs per engine in one tensor-parallel group
    rollout_pipeline_parallel: int = 1  # pipeline stages per engine (engine GPUs = tp x pp)
    # sequences one engine holds in flight (KV cache / lightning state; vLLM max_num_seqs); 0 =
    # all of its share of the step (prompts_per_step x group_size / rollout.num_workers)
    rollout_concurrency: int = 0
    rollout_batched_tokens: int = 8192  # tokens per engine forward (vLLM max_num_batched_tokens)
    # where the engines sit (cispo.placement): "separate" = GPUs of their own (weights by NCCL
    # broadcast); "colocated" = on the learner's GPUs, taking turns with it (weights by CUDA IPC)
    placement: str = "separate"


@dataclass
class ScheduleConfig:
    """M1's staged output window (report section 3.3): raise rollout.max_new_tokens stage by
    stage when generation has settled at the current window. Empty `windows` = off."""

    # output-token windows, one per stage (M1: 40K -> 48K -> 56K -> 64K -> 72K -> 80K; K = 1024
    # is our reading)
    windows: list[int] = field(default_factory=list)
    # per stage; empty = keep algorithm.eps_high / learner.grad_clip. M1 lowers both in late
    # stages (report 3.3) without publishing values: the numbers in conf/exp are our choice.
    eps_high: list[float] = field(default_factory=list)
    grad_clip: list[float] = field(default_factory=list)
    # advance when the 99th-percentile response length >= this fraction of the window (our choice)
    p99_fraction: float = 0.9
    # ... and the generated text's perplexity changed by less than this relative amount between
    # the means of the last two `ppl_window`-step spans (our choice)
    ppl_rel_tol: float = 0.02
    ppl_window: int = 10  # steps per span in the plateau test (our choice)
    min_steps_per_stage: int = 20  # never advance sooner (our choice)


@dataclass
class MixPoint:
    step: int = 0  # trainer step this point applies from (weights interpolate between points)
    weights: dict[str, float] = field(default_factory=dict)  # source name -> relative weight


@dataclass
class DataMixConfig:
    """Several prompt sources mixed by weights that change over steps (M1's curriculum:
    reasoning first, then mixed with general data). Empty `sources` = off: `data.source` only."""

    # name -> a `data.source` value (local .jsonl/.json/.parquet, hub name, "arithmetic");
    # every other data.* key applies to each source
    sources: dict[str, str] = field(default_factory=dict)
    # weights over steps: piecewise linear between points, constant before the first and after
    # the last; a step's prompts are split by them (largest remainder)
    schedule: list[MixPoint] = field(default_factory=list)


@dataclass
class EnvConfig:
    """Multi-turn episodes (docs/environments.md): the policy calls tools, the environment
    answers, generation goes on. Empty `name` = single-turn generation."""

    name: str = ""  # a registered environment (environments.registry): calc, swe, or your own
    modules: list[str] = field(default_factory=list)  # .py files with @environment classes
    options: dict[str, Any] = field(default_factory=dict)  # keyword arguments of its constructor
    max_turns: int = 4  # model turns per episode
    # tokens after the prompt, model and environment together (the trained sequence's response)
    max_total_tokens: int = 256
    episode_timeout_s: float = 120.0  # wall clock of one episode; past it the episode ends
    step_timeout_s: float = 30.0  # one reset/step call; past it the episode ends with env_error
    max_observation_tokens: int = 256  # one observation; more ends the episode with env_error
    error_reward: float = 0.0  # score of an episode its environment ended (raised, hung, flooded)


@dataclass
class Config:
    exp_name: str = "default"
    run_dir: str = "runs/${exp_name}-${now:%Y%m%d-%H%M%S}"
    # null: start fresh; "auto": continue from the newest checkpoint in run_dir if there is one
    # (pass the same run_dir); or a path to run_dir/checkpoints/step_N
    resume: str | None = None
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    sandbox: SandboxConfig = field(default_factory=SandboxConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    # issue 6
    plan: bool = False  # print the resource plan, write run_dir/plan.json, train nothing
    # check the cluster instead of training: every node answers, Docker and the sandbox image on
    # the sandbox nodes, run_dir shared by the nodes (cispo.preflight, docs/launch.md)
    preflight: bool = False
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    data_mix: DataMixConfig = field(default_factory=DataMixConfig)
    env: EnvConfig = field(default_factory=EnvConfig)  # issue 17


def register() -> None:
    ConfigStore.instance().store(name="cispo_schema", node=Config)


register()


def as_dict(cfg: Any) -> dict:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]

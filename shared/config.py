"""The config schema: Hydra structured configs, one documented field at a time.

YAML files under `conf/` only set values; this module says what each value means and checks
the cross-field rules once, at start-up, with messages that say what to set.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING

from shared.engines import engine_rules
from shared.errors import UserError
from shared.sampling import MAX_ROUNDS_PER_STEP


@dataclass
class ModelConfig:
    # "tiny" (or "tiny_hint"): the embedded offline model shipped with the repository;
    # otherwise a model preset's hub id, a hub id or a local directory.
    name: str = "tiny"
    # Torch dtype of the learner's differentiable copy (float32 on CPU, bfloat16 on GPU).
    dtype: str = "float32"
    # Device of the learner's model ("cpu" or "cuda").
    device: str = "cpu"
    # The square image size this model's preset trains by default (image.height/width null).
    image_size: int = 64
    # Parameter count (cluster=single_gpu's memory model: bfloat16 weights = 2 bytes each).
    num_parameters: int = 409_736
    # The learner's activation bytes per token of a micro-batch, with activation checkpointing
    # in bfloat16 (cluster=single_gpu's memory model; measured for the 0.8B architecture,
    # scaled by layers x hidden size for the others: conf/model/*.yaml, docs/performance.md).
    learner_bytes_per_token: float = 60_000.0


def model_rules(cfg: Any) -> list[tuple[bool, str]]:
    """The model section's rules."""
    return [
        (
            cfg.model.device in ("cpu", "cuda"),
            f"model.device={cfg.model.device!r}: use cpu or cuda",
        ),
        (
            not (cfg.model.device == "cuda" and cfg.learner.num_gpus == 0),
            "model.device=cuda puts the learner on a GPU but learner.num_gpus=0 asks Ray for "
            "none (it would land on another actor's GPU): set learner.num_gpus=1 (or null), or "
            "model.device=cpu",
        ),
    ]


@dataclass
class TaskConfig:
    # A task name (shared.tasks.TASKS: synthetic, gsm8k, ..., custom, reasoning_gym), or the
    # import path of a Task class of your own: module:Class or path/to/file.py:Class.
    name: str = "synthetic"
    # Keyword options passed to the task's constructor (data_dir, target, ...).
    options: dict[str, Any] = field(default_factory=dict)
    # Dataset split that training prompts are drawn from.
    split: str = "train"
    # Optional system prompt placed before the user turn (null: the task's own, if it has one).
    system_prompt: str | None = None
    # Render prompts with thinking enabled (Qwen3.5 chat template flag); ART disables it.
    enable_thinking: bool = False
    # Reward functions by import path (module:function or path/to/file.py:function), TRL's or
    # verl's shape (docs/tasks.md); the reward is their weighted sum. Empty: the task's own.
    rewards: list[str] = field(default_factory=list)
    # One weight per reward function (null: 1.0 each), as TRL's reward_weights.
    reward_weights: list[float] | None = None
    # [min, max] of every reward function's value (the task's own reward included); a value
    # outside is counted as a failure.
    reward_range: list[float] = field(default_factory=lambda: [0.0, 1.0])
    # Per-function ranges by the function's name, e.g. {format: [-1, 1]} (others: reward_range).
    reward_ranges: dict[str, list[float]] = field(default_factory=dict)
    # The strict score (accuracy, dynamic sampling, evaluation) by import path, returning 0 or
    # 1; null: 1 when the weighted reward reaches its maximum (the task's own score without
    # task.rewards).
    score: str | None = None
    # What a reward function's value becomes for a completion it failed on (raised, timed out,
    # NaN/inf, a wrong type, out of range); null: the minimum of its range.
    reward_fallback: float | None = None
    # Seconds one call of a user reward function may take; its process is then killed and
    # replaced, and the call counts as a failure.
    reward_timeout_s: float = 30.0
    # Processes that run user reward functions (0: the driver's own process, no timeout).
    reward_processes: int = 2


@dataclass
class DistillConfig:
    # "forward": KL(teacher || student) on completions the teacher samples (Askell et al. 2021,
    # Snell et al. 2022); "reverse": KL(student || teacher) on completions the student samples
    # with the current image (on-policy context distillation).
    direction: str = "forward"
    # The teacher's text context (a system prompt, few-shot examples, a document); null with
    # context_file null: the task's own (the synthetic task's hint).
    context: str | None = None
    # A UTF-8 text file holding the teacher's context (instead of context).
    context_file: str | None = None
    # Where the teacher's prompt holds the context: "system" (its own system turn, after
    # task.system_prompt) or "user" (before the question in the user turn).
    placement: str = "system"


@dataclass
class TeacherConfig:
    # algo=opd: the teacher model (a model preset name, a hub id or a local folder), a second
    # frozen model with the same tokenizer as model.name that scores the student's samples.
    model: str | None = None
    # The teacher's text context: null (the question alone), "task" (the task's own context,
    # e.g. the synthetic task's hint) or the text itself.
    context: str | None = None
    # Where that context goes: "system" (its own system turn) or "user" (before the question).
    placement: str = "system"


# The values of algo.loss_agg_mode (learner/objectives/aggregation.py implements them).
AGG_MODES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")


@dataclass
class AlgoConfig:
    # The objective (docs/objectives.md): a policy-gradient loss on rewarded samples ("dapo",
    # "grpo", "dr_grpo", "gspo", "cispo", or package.module:function of your own, registered
    # as in learner/objectives/registry.py), "sft" (the log-likelihood of the task's gold
    # completions, no sampling), "distill" (the KL to the model given a text context), "opd"
    # (the reverse KL to a teacher model on the student's samples), or the import path of an
    # Algorithm class of your own (learner/driver/algorithms/).
    loss: str = "dapo"
    # Advantages from a group's rewards (learner/objectives/advantages.py): "grpo" (minus the
    # group mean, divided by its std unless norm_adv_by_std is false), "rloo" (minus the mean
    # of the others), or package.module:function of your own.
    adv_estimator: str = "grpo"
    # How the loss's per-token terms become one number: token-mean, seq-mean-token-mean,
    # seq-mean-token-sum, seq-mean-token-sum-norm (null: the loss's own; the run's config.yaml
    # records which).
    loss_agg_mode: str | None = None
    # Divide each group's advantages by the group's reward std (GRPO, DAPO); false: the reward
    # minus the group mean only (Dr. GRPO). null: the loss's own.
    norm_adv_by_std: bool | None = None
    # The constant seq-mean-token-sum-norm divides each completion's token sum by (verl's
    # loss_scale_factor, Dr. GRPO's and TRL's max_completion_length); null: the completion-length
    # limit (rollout.max_new_tokens, or the task's).
    loss_scale_factor: int | None = None
    # algo.loss=distill: the teacher's context and the KL's direction.
    distill: DistillConfig = field(default_factory=DistillConfig)
    # algo.loss=opd: the teacher model and its prompt.
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    # Completions sampled per prompt (G); distill: completions per prompt; sft: unused.
    group_size: int = 8
    # Groups (prompts) per learner step after dynamic sampling; sft: gold completions per step.
    prompts_per_step: int = 4
    # Lower clip range of the importance ratio.
    eps_low: float = 0.2
    # Upper clip range (clip-higher: larger than eps_low); cispo: its weight's cap is
    # 1 + eps_high.
    eps_high: float = 0.28
    # verl's dual clip for negative advantages: the objective is at least c * A (null: off, as
    # in the DAPO paper). Guards against huge ratios on stale samples. Not with cispo, whose
    # weight is capped already.
    clip_ratio_c: float | None = 3.0
    # 0: synchronous; 1: the workers sample step t+1 with image v while the learner computes
    # the update from step t (old log-probs use the image each completion was sampled with).
    max_staleness: int = 0
    # Dynamic sampling: extra generation rounds allowed to refill dropped groups.
    max_extra_rounds: int = 2
    # Dynamic sampling keeps a group when its strict accuracies differ ("acc", DAPO's and
    # verl's filter) or when its reward std exceeds min_reward_std ("reward"); "none" keeps
    # every group (dynamic sampling off, as plain GRPO).
    filter_metric: str = "acc"
    # With filter_metric=reward: the smallest reward std (population) a kept group has.
    min_reward_std: float = 0.0
    # Steps in a row without one informative group (every group's accuracies equal: nothing
    # to learn from) that stop the run with one line saying why (0: never stop).
    max_uninformative_steps: int = 10
    # Overlong shaping buffer in tokens before max_new_tokens (0 disables the penalty).
    overlong_buffer: int = 0
    # Optimizer steps per rollout batch (the batch is split into this many minibatches).
    num_minibatches: int = 2
    # Sampling temperature; the learner divides logits by the same value.
    temperature: float = 1.0
    # Rollout correction (learner/rollout_correction.py): "token" re-weights each token by the
    # truncated importance ratio min(pi_old / pi_rollout, cap) between the learner's and the
    # engine's log-probs (TIS; verl, slime, prime-rl); "sequence" one capped ratio per
    # completion; "off" trusts the engine's numerics. Its diagnostics are logged either way.
    rollout_correction: str = "token"
    # The cap of the truncated ratio.
    rollout_correction_cap: float = 2.0


def algo_rules(cfg: Any) -> list[tuple[bool, str]]:
    """The algorithm section's rules (the algorithm's own are in learner/driver/algorithms/)."""
    algo = cfg.algo
    return [
        (
            algo.loss_scale_factor is None or algo.loss_scale_factor >= 1,
            f"algo.loss_scale_factor={algo.loss_scale_factor}: set >= 1 (null: the completion "
            "limit)",
        ),
        (
            algo.loss_agg_mode is None or algo.loss_agg_mode in AGG_MODES,
            f"algo.loss_agg_mode={algo.loss_agg_mode!r}: use one of {', '.join(AGG_MODES)}, or "
            "null for the loss's own",
        ),
        (
            algo.prompts_per_step >= 1,
            f"algo.prompts_per_step={algo.prompts_per_step}: set >= 1 (groups per step)",
        ),
        (0 < algo.eps_low < 1, f"algo.eps_low={algo.eps_low} must be in (0, 1)"),
        (
            algo.eps_high >= algo.eps_low,
            f"algo.eps_high={algo.eps_high} < algo.eps_low={algo.eps_low}: clip-higher needs "
            "eps_high >= eps_low (DAPO: 0.28 and 0.2)",
        ),
        (
            0 <= algo.max_extra_rounds < MAX_ROUNDS_PER_STEP,
            f"algo.max_extra_rounds={algo.max_extra_rounds}: use 0 to "
            f"{MAX_ROUNDS_PER_STEP - 1} (a step has at most {MAX_ROUNDS_PER_STEP} rounds of "
            "seeds)",
        ),
        (
            algo.temperature > 0,
            f"algo.temperature={algo.temperature}: training samples, so set > 0 (1.0 is the "
            "model's own distribution); greedy decoding is for evaluation",
        ),
        (
            algo.clip_ratio_c is None or algo.clip_ratio_c > 1,
            f"algo.clip_ratio_c={algo.clip_ratio_c}: the dual clip needs c > 1 (verl: 3.0), or "
            "null to turn it off",
        ),
        (
            algo.max_staleness in (0, 1),
            f"algo.max_staleness={algo.max_staleness}: use 0 (synchronous) or 1 (sample the "
            "next step while the learner updates)",
        ),
        (
            algo.filter_metric in ("acc", "reward", "none"),
            f"algo.filter_metric={algo.filter_metric!r}: use 'acc', 'reward' or 'none'",
        ),
        (algo.min_reward_std >= 0, "algo.min_reward_std must be >= 0"),
        (algo.max_uninformative_steps >= 0, "algo.max_uninformative_steps must be >= 0"),
        (
            algo.rollout_correction in ("off", "token", "sequence"),
            f"algo.rollout_correction={algo.rollout_correction!r}: use off, token or sequence",
        ),
        (algo.rollout_correction_cap >= 1, "algo.rollout_correction_cap must be >= 1"),
    ]


@dataclass
class RolloutConfig:
    # Engine (shared/engines.py): "hf" (transformers generate) or "vllm" (the production engine;
    # on a CPU machine vLLM's CPU build from `make install-vllm`).
    engine: str = "hf"
    # The Python interpreter of the rollout worker actors (Ray's per-actor `py_executable`):
    # "auto" runs vLLM workers in $ART_VLLM_PYTHON, else in this checkout's .venv-vllm (built by
    # `make install-vllm`) when it exists, else in the driver's own interpreter; "self" always
    # the driver's own; or a path, which must exist on every node that hosts a worker.
    python: str = "auto"
    # Number of RolloutWorker actors a run starts with; each step's prompts are spread over
    # all of them. A running run changes it at a step boundary with `art-scale --workers N`.
    num_workers: int = 2
    # The most workers `art-scale` may ask for (null: num_workers, a fixed pool).
    max_workers: int | None = None
    # Workers that must be up before the first step (null: num_workers). With fewer, the run
    # starts as soon as these are, and the others join at a step boundary once their
    # resources arrive (an autoscaling cluster: cluster.check_resources=false).
    min_workers: int | None = None
    # GPUs per vLLM engine (tensor parallelism): each worker gets a placement group of this
    # many GPU bundles packed on one node, and vLLM shards the model over them.
    tensor_parallel_size: int = 1
    # Max completion tokens; null takes the task's own limit.
    max_new_tokens: int | None = None
    # Nucleus sampling in training; must be 1.0: the learner scores the full tempered
    # distribution, so truncated sampling would make every importance ratio wrong.
    top_p: float = 1.0
    # CPUs reserved per worker actor.
    num_cpus_per_worker: float = 1.0
    # GPUs reserved per worker actor; the engine runs on cuda when > 0, else on the CPU. null:
    # 1 where the Ray cluster has GPUs (or may get them: cluster.check_resources=false), else 0
    # (vLLM's CPU build); the run's config.yaml records what was chosen.
    num_gpus_per_worker: float | None = 0.0
    # Custom Ray resources per worker actor, e.g. {rollout_node: 1} to pin workers to nodes.
    resources: dict[str, float] = field(default_factory=dict)
    # Torch dtype of the engine's model.
    dtype: str = "float32"
    # vLLM only: fraction of GPU memory the engine may take.
    gpu_memory_utilization: float = 0.85
    # vLLM only: KV cache size in bytes instead of gpu_memory_utilization (null: the fraction
    # on a GPU; 1 GiB on a CPU, where vLLM reads gpu_memory_utilization as a fraction of RAM).
    kv_cache_memory_bytes: int | None = None
    # vLLM only: no torch.compile / CUDA graphs (null: eager on a CPU, compiled on a GPU).
    enforce_eager: bool | None = None
    # vLLM only: Qwen3.5's linear-attention prefill kernel. "triton" runs everywhere vLLM
    # runs (and matches the learner's numerics most closely); null leaves vLLM's default
    # (FlashInfer's bf16 kernel on Hopper: faster prefill, needs FlashInfer installed).
    gdn_prefill_backend: str | None = "triton"
    # Seed every request (shared/sampling.py): a completion depends only on its own seed, so a
    # run is reproducible whatever the number of workers; false leaves vLLM's one engine seed
    # (vLLM's faster batched sampling; completions then depend on batching and worker count).
    seeded: bool = True
    # vLLM only, GPU: put the engine to sleep during the learner's update (its KV cache
    # dropped, its weights in host memory, restored on wake-up) so that the learner can use
    # its memory (null: off, except where cluster=single_gpu's memory plan needs it).
    sleep_mode: bool | None = None
    # vLLM only: max model length (prompt + completion).
    max_model_len: int = 4096
    # Times Ray restarts a worker whose process died (its chunk is sampled again).
    max_restarts: int = 3
    # Import path of the worker actor class (the driver never imports rollout_worker itself).
    worker_cls: str = "rollout_worker.worker.RolloutWorker"


def rollout_rules(cfg: Any) -> list[tuple[bool, str]]:
    """The rollout section's rules (the engine's own are in shared/engines.py)."""
    algo, rollout = cfg.algo, cfg.rollout
    return [
        (
            rollout.top_p == 1.0,
            f"rollout.top_p={rollout.top_p}: training needs top_p=1.0 because the learner "
            "computes log-probs of the full tempered distribution; nucleus sampling would make "
            "the importance ratios wrong",
        ),
        (rollout.num_workers >= 1, f"rollout.num_workers={rollout.num_workers}: set >= 1"),
        (
            rollout.max_workers is None or rollout.max_workers >= rollout.num_workers,
            f"rollout.max_workers={rollout.max_workers} must be >= rollout.num_workers="
            f"{rollout.num_workers} (null: a fixed pool of num_workers)",
        ),
        (
            rollout.min_workers is None or 1 <= rollout.min_workers <= rollout.num_workers,
            f"rollout.min_workers={rollout.min_workers} must be in [1, rollout.num_workers="
            f"{rollout.num_workers}] (null: wait for all of them)",
        ),
        (
            rollout.tensor_parallel_size >= 1,
            f"rollout.tensor_parallel_size={rollout.tensor_parallel_size}: set >= 1",
        ),
        (
            rollout.tensor_parallel_size == 1 or rollout.num_gpus_per_worker in (None, 1),
            f"rollout.tensor_parallel_size={rollout.tensor_parallel_size} gives each worker that "
            f"many whole GPUs: set rollout.num_gpus_per_worker=1 (not "
            f"{rollout.num_gpus_per_worker})",
        ),
        (
            rollout.num_gpus_per_worker is None or rollout.num_gpus_per_worker >= 0,
            "rollout.num_gpus_per_worker must be >= 0 (null: 1 where the cluster has GPUs)",
        ),
        (
            not (rollout.sleep_mode and algo.max_staleness),
            "rollout.sleep_mode puts the engine to sleep during the update, when "
            "algo.max_staleness=1 would sample: use one of them",
        ),
        (
            rollout.kv_cache_memory_bytes is None or rollout.kv_cache_memory_bytes > 0,
            "rollout.kv_cache_memory_bytes must be > 0 (null: vLLM's default sizing)",
        ),
        (rollout.max_restarts >= 0, "rollout.max_restarts must be >= 0"),
        *(
            [
                (rollout.max_new_tokens >= 1, "rollout.max_new_tokens must be >= 1"),
                (
                    algo.overlong_buffer < rollout.max_new_tokens,
                    f"algo.overlong_buffer={algo.overlong_buffer} must be < rollout.max_new_tokens",
                ),
            ]
            if rollout.max_new_tokens is not None
            else []
        ),
    ]


@dataclass
class LearnerConfig:
    # Adam learning rate on the pixel logits.
    lr: float = 0.05
    # Sequences per forward/backward pass (gradient accumulation above this).
    micro_batch_size: int = 32
    # Padded tokens per pass, as verl's ppo_max_token_len_per_gpu: sequences x longest prompt
    # + completion, or with the shared-prefix forward each distinct prompt once (prompts x
    # longest prompt + sequences x longest completion); packed longest first (null: no
    # budget). The gradient does not depend on it, the learner's peak memory does.
    max_tokens_per_micro_batch: int | None = None
    # Compute each distinct prompt of a pass once for all of its completions (its image
    # features too) and fork its state to them: attention keys/values and the linear-attention
    # layers' recurrent and convolution states (learner/shared_prefix.py; the same log-probs
    # and gradient as the padded forward). false: every sequence computes its own prompt. A
    # model it does not support runs the padded forward (one log line says why).
    shared_prefix: bool = True
    # Clip the pixel-logit gradient norm (0 disables).
    max_grad_norm: float = 0.0
    # Consecutive optimizer steps refused for a NaN/inf loss or gradient that stop the run.
    max_consecutive_skips: int = 3
    # Recompute each frozen decoder layer in backward instead of keeping its activations
    # (less memory for long sequences and large models, about one more forward of time).
    activation_checkpointing: bool = False
    # CPUs reserved for the learner actor.
    num_cpus: float = 1.0
    # GPUs reserved for the learner actor; null: 1 when model.device is cuda, else 0.
    num_gpus: float | None = None
    # Custom Ray resources for the learner actor, e.g. {learner_node: 1}.
    resources: dict[str, float] = field(default_factory=dict)
    # Data-parallel learner replicas: each holds the frozen model and computes the DAPO
    # gradient of its share of the step's sequences; only the trained tensors' gradient (the
    # pixels: 3 x H x W floats) is all-reduced (gloo on CPU, NCCL on GPU), then every replica
    # takes the same optimizer step. Each replica asks for num_cpus/num_gpus/resources.
    num_replicas: int = 1


def learner_rules(cfg: Any) -> list[tuple[bool, str]]:
    """The learner section's rules."""
    return [
        (
            cfg.learner.num_replicas >= 1,
            f"learner.num_replicas={cfg.learner.num_replicas}: set >= 1",
        ),
        (
            cfg.learner.num_replicas == 1
            or cfg.model.device != "cuda"
            or cfg.learner.num_gpus is None
            or cfg.learner.num_gpus == 1,
            f"learner.num_replicas={cfg.learner.num_replicas} on cuda: each replica needs a GPU "
            f"of its own (NCCL refuses two ranks on one device): set learner.num_gpus=1 (not "
            f"{cfg.learner.num_gpus})",
        ),
        (0 < cfg.learner.lr < float("inf"), f"learner.lr={cfg.learner.lr} must be > 0 and finite"),
        (cfg.learner.max_consecutive_skips >= 1, "learner.max_consecutive_skips must be >= 1"),
        (cfg.learner.micro_batch_size >= 1, "learner.micro_batch_size must be >= 1"),
        (
            cfg.learner.max_tokens_per_micro_batch is None
            or cfg.learner.max_tokens_per_micro_batch >= 1,
            "learner.max_tokens_per_micro_batch must be >= 1 (null: no token budget)",
        ),
    ]


@dataclass
class ImageConfig:
    # Image height in pixels (a multiple of patch x merge, inside the processor's range);
    # null: the model preset's image_size.
    height: int | None = None
    # Image width in pixels; null: the model preset's image_size.
    width: int | None = None
    # Seed picture: "gray", "noise", "icon:math", "icon:wrench", "icon:task" (the task's icon),
    # or an image file (any size and mode but CMYK; resized with Lanczos to height x width).
    init: str = "gray"
    # What transparent pixels of a seed image are composited over: white, black, gray, #rrggbb.
    background: str = "white"


def image_rules(cfg: Any) -> list[tuple[bool, str]]:
    """The image section's rules."""
    return [
        (cfg.image.height > 0 and cfg.image.width > 0, "image.height and image.width must be > 0"),
        background_rule(cfg.image.background),
    ]


@dataclass
class LoggingConfig:
    # MLflow tracking URI (http://host:5000 on a cluster); a bare path is a local SQLite file.
    tracking_uri: str = "mlflow.db"
    # Where a new experiment stores artifacts (PNGs); a bare path is a local folder.
    artifact_location: str | None = "mlartifacts"
    # MLflow experiment name.
    experiment: str = "art"
    # Log the PNG as an MLflow artifact and write a checkpoint every this many steps.
    checkpoint_every: int = 10
    # Keep the newest N checkpoints/step_*.pt (and the best step's); null keeps every one.
    keep_checkpoints: int | None = None
    # At the end, wait up to this many seconds for MLflow to take what is queued (what it does
    # not take stays in the run's metrics.jsonl, and summary.json says so); steps never wait.
    tracking_wait_s: float = 30.0
    # Show a progress bar (plain log lines are printed either way when not on a terminal).
    progress: bool = True


def logging_rules(cfg: Any) -> list[tuple[bool, str]]:
    """The logging section's rules."""
    return [
        (cfg.logging.checkpoint_every >= 1, "logging.checkpoint_every must be >= 1"),
        (
            cfg.logging.keep_checkpoints is None or cfg.logging.keep_checkpoints >= 1,
            f"logging.keep_checkpoints={cfg.logging.keep_checkpoints}: keep >= 1 (null: all)",
        ),
        (cfg.logging.tracking_wait_s >= 0, "logging.tracking_wait_s must be >= 0"),
    ]


@dataclass
class EvalConfig:
    # Image conditions for art-eval: "none" (text-only), "seed" (the configured seed image),
    # or a path to a trained PNG.
    conditions: list[str] = field(default_factory=lambda: ["none", "seed"])
    # Split evaluated (a held-out one).
    split: str = "test"
    # Number of examples (null: the whole split, as the paper evaluates).
    limit: int | None = None
    # Max new tokens for greedy decoding; null takes the task's own limit (512 for math).
    max_new_tokens: int | None = None
    # vLLM's presence penalty in evaluation (the paper's 1.0); training never uses one.
    presence_penalty: float = 1.0
    # During training: evaluate the current image every this many steps (0: never) on a
    # validation slice carved from the training split (never the test split); keeps best.png.
    every: int = 10
    # During training: size of that validation slice (held out of the training prompts).
    val_size: int = 32
    # Accept PNGs without ART metadata (e.g. an arbitrary picture) in art-eval.
    allow_untagged_images: bool = False


def eval_rules(cfg: Any) -> list[tuple[bool, str]]:
    """The eval section's rules."""
    return [
        (cfg.eval.every >= 0, "eval.every must be >= 0 (0 disables periodic evaluation)"),
        (
            cfg.eval.every == 0 or cfg.eval.val_size >= 1,
            "eval.val_size must be >= 1 (or set eval.every=0)",
        ),
        (
            cfg.eval.limit is None or cfg.eval.limit >= 1,
            "eval.limit must be >= 1 (null: the whole split)",
        ),
    ]


@dataclass
class ClusterConfig:
    # Ray address: null starts a local in-process instance; "auto" joins a running cluster.
    address: str | None = None
    # CPUs of the local instance (null: all).
    num_cpus: int | None = None
    # Show the Ray dashboard of a local instance.
    include_dashboard: bool = False
    # Refuse at start-up what the cluster cannot place (turn off on autoscaling clusters).
    check_resources: bool = True
    # Seconds to wait for every actor to start before failing with the pending ones named.
    actor_start_timeout_s: float = 900.0
    # One GPU shared by the learner and one vLLM worker (cluster=single_gpu): the memory
    # plan of learner/driver/single_gpu.py picks vLLM's share, sleep mode and the token budget.
    single_gpu: bool = False
    # The GPU's memory for that plan (null: nvidia-smi's figure for GPU 0).
    gpu_memory_gib: float | None = None


def cluster_rules(cfg: Any) -> list[tuple[bool, str]]:
    """The cluster section's rules."""
    rollout = cfg.rollout
    return [
        (
            cfg.learner.num_replicas == 1 or not cfg.cluster.single_gpu,
            "cluster=single_gpu runs one learner: set learner.num_replicas=1",
        ),
        (
            not cfg.cluster.single_gpu or rollout.num_workers == 1,
            f"cluster=single_gpu shares one GPU between the learner and one rollout worker: "
            f"set rollout.num_workers=1 (not {rollout.num_workers})",
        ),
    ]


@dataclass
class LoraSettings:
    # Adapter rank r.
    rank: int = 16
    # Scaling alpha (the update is alpha / r * B A).
    alpha: float = 32.0
    # Dropout on the adapter's input; 0 keeps the learner's log-probs those the engine samples.
    dropout: float = 0.0
    # Module names adapted (language model only: the vision tower's modules are named otherwise).
    target_modules: list[str] = field(
        default_factory=lambda: [
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "gate_proj",
            "up_proj",
            "down_proj",
        ]
    )


@dataclass
class MethodConfig:
    # "art": train the pixels of one image; "lora": the baseline, a LoRA adapter on the
    # language model trained by the same DAPO loop (rollouts, rewards, loss, optimizer loop).
    name: str = "art"
    # lora only: keep the seed image in the prompts (default: text-only prompts).
    with_image: bool = False
    # lora only: the adapter.
    lora: LoraSettings = field(default_factory=LoraSettings)


def method_rules(cfg: Any) -> list[tuple[bool, str]]:
    """The method section's rules."""
    return [
        (
            cfg.method.name in ("art", "lora"),
            f"method={cfg.method.name!r}: use method=art (the default) or method=lora",
        ),
        (
            cfg.method.lora.rank >= 1 and 0 <= cfg.method.lora.dropout < 1,
            "method.lora.rank must be >= 1 and method.lora.dropout in [0, 1)",
        ),
    ]


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    image: ImageConfig = field(default_factory=ImageConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    # Learner steps (each: sample, score, update, broadcast).
    steps: int = 60
    # Seed of prompt order, sampling and image noise.
    seed: int = 0
    # Run name (MLflow run and output folder); null derives one from the time.
    run_name: str | None = None
    # Where run folders go.
    output_dir: str = "outputs"
    # Checkpoint to resume from (<run>/checkpoints/last.pt): the run continues in its folder.
    resume_from: str | None = None
    # "auto": continue the newest run of output_dir (or output_dir/run_name) that has a
    # checkpoint, else start a new run; null: always a new run.
    resume: str | None = None
    # A run folder's lock (driver.lock) not renewed for this many seconds is taken over (a
    # driver on another machine that is gone); on this machine a dead holder's lock at once.
    lock_stale_s: float = 120.0
    # Several tasks in one run (learner/driver/multitask.py, docs/multi-task.md): task name ->
    # its task fields (name, options, rewards, ...) and steps, weight, init, seed,
    # stop_at_accuracy; a preset of conf/tasks/ (tasks=letters4). Empty: the one `task`.
    tasks: dict[str, Any] = field(default_factory=dict)
    # A YAML file of more such tasks (merged into `tasks`).
    tasks_file: str | None = None
    # Set by Hydra: the run directory.
    run_dir: str = MISSING


def run_rules(cfg: Any) -> list[tuple[bool, str]]:
    """The run's own fields (steps, resume, the lock)."""
    return [
        (cfg.steps >= 1, f"steps={cfg.steps}: set steps >= 1"),
        (
            cfg.resume in (None, "auto"),
            f"resume={cfg.resume!r}: use resume=auto, or resume_from=<run>/checkpoints/last.pt",
        ),
        (cfg.lock_stale_s > 0, f"lock_stale_s={cfg.lock_stale_s} must be > 0 (seconds)"),
    ]


class ConfigError(UserError):
    """An impossible configuration; the message says what to set."""


def resolve(cfg: Any) -> None:
    """Fill the values that follow from others (the image size from the model preset), in
    the config itself so that the run's config.yaml says what ran."""
    # start-up time: a heavy library, loaded when this runs
    from omegaconf import open_dict

    with open_dict(cfg):
        if cfg.image.height is None:
            cfg.image.height = cfg.model.image_size
        if cfg.image.width is None:
            cfg.image.width = cfg.model.image_size


def background_rule(background: str) -> tuple[bool, str]:
    from shared.images import parse_background  # shared.images needs PIL: not at import

    try:
        parse_background(background)
    except UserError as err:
        return (False, str(err))
    return (True, "")


# Every section's rules, in the order their errors are listed.
SECTION_RULES = (
    model_rules,
    algo_rules,
    rollout_rules,
    learner_rules,
    image_rules,
    logging_rules,
    eval_rules,
    cluster_rules,
    method_rules,
    run_rules,
)


def validate(cfg: Any, more_rules: list[tuple[bool, str]] = ()) -> None:
    """Derived values filled in (`resolve`), then the cross-field rules, checked once at
    start-up: each section's (beside its fields above), the task's, the rollout engine's
    (shared/engines.py) and `more_rules` (the algorithm's: learner/driver/algorithms/), all in
    one error."""
    resolve(cfg)
    rules = [rule for section in SECTION_RULES for rule in section(cfg)]
    rules += [*task_rules(cfg.task), *engine_rules(cfg), *more_rules]
    errors = [msg for ok, msg in rules if not ok]
    if errors:
        raise ConfigError("invalid config: " + "; ".join(errors))


def task_rules(task: Any) -> list[tuple[bool, str]]:
    """The task section's own rules (rewards by import path: docs/tasks.md)."""
    if task.name == "class":  # conf/task/class.yaml, without the class
        return [(False, "task=class needs task.name=<module:Class or path/to/file.py:Class>")]
    rewards, weights, span = list(task.rewards or []), task.reward_weights, task.reward_range
    rules = [
        (
            weights is None or len(weights) == len(rewards),
            f"task.reward_weights has {len(weights or [])} weights for {len(rewards)} "
            "task.rewards: give one per function (or null: 1.0 each)",
        ),
        (task.reward_timeout_s > 0, "task.reward_timeout_s must be > 0"),
        (task.reward_processes >= 0, "task.reward_processes must be >= 0 (0: in the driver)"),
    ]
    for key, pair in [("task.reward_range", span)] + [
        (f"task.reward_ranges.{k}", v) for k, v in (task.reward_ranges or {}).items()
    ]:
        rules.append(
            (
                pair is not None and len(pair) == 2 and pair[0] < pair[1],
                f"{key}={list(pair) if pair is not None else None}: give [min, max] with min < max",
            )
        )
    return rules


def learner_gpus(cfg: Any) -> float:
    """GPUs the learner actor asks Ray for: `learner.num_gpus`, or 1 on cuda when null."""
    if cfg.learner.num_gpus is None:
        return 1.0 if cfg.model.device == "cuda" else 0.0
    return float(cfg.learner.num_gpus)


def register_configs() -> None:
    # start-up time: a heavy library, loaded when this runs
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainConfig)

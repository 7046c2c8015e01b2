"""Typed messages that cross process boundaries (driver <-> rollout workers <-> learner).

Each message says who sends it and who receives it, and checks its invariants on construction,
so a malformed batch fails where it is made rather than deep inside a loss.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class SamplingConfig:
    """How rollout engines sample. Driver -> RolloutWorker.

    `greedy=True` decodes greedily (evaluation); the reported log-probs are then at T=1.
    `presence_penalty` subtracts its value from the logit of every token already generated in
    the completion (vLLM's definition); evaluation only, training samples without it.
    `seed` is the round's base seed (`shared.sampling`).
    """

    temperature: float = 1.0
    max_new_tokens: int = 8
    top_p: float = 1.0
    seed: int | None = None
    greedy: bool = False
    presence_penalty: float = 0.0

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0 for RL sampling, got {self.temperature}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")


@dataclass(frozen=True)
class RolloutRequest:
    """One prompt to sample a group of `n` completions for. Driver -> RolloutWorker.

    `prompt` is the chat-rendered text with a single image placeholder
    (`<|vision_start|><|image_pad|><|vision_end|>`); each engine expands it for the image.
    With `with_image=False` (the text-only baseline of evaluation) the prompt has none and
    the worker's image is not attached. Several tasks in one batch (a multi-task run): each
    request names its task's image (`image_key`, "" for the run's one image) and may carry its
    own seed base (`seed`, instead of the batch's `SamplingConfig.seed`), so that a task
    samples what it would sample alone.
    """

    request_id: int
    prompt: str
    n: int
    with_image: bool = True
    image_key: str = ""
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"group size n must be >= 1, got {self.n}")
        if self.with_image != ("<|image_pad|>" in self.prompt):
            raise ValueError(
                "RolloutRequest.with_image must match the prompt: an image request needs exactly "
                "the one <|image_pad|> placeholder, a text-only request none"
            )


@dataclass(frozen=True)
class Completion:
    """One sampled completion. RolloutWorker -> Driver -> Learner.

    Invariant: `len(logprobs) == len(token_ids)`; `logprobs[i]` is the engine's log-probability
    of `token_ids[i]` under the sampling distribution (temperature applied). `token_ids`
    includes the end-of-turn token when the completion stopped on its own.
    `prompt_token_ids` are the ids the engine sampled from, the image placeholder expanded to
    the image's tokens: the learner scores exactly these, so both sides agree by construction.
    """

    request_id: int
    token_ids: tuple[int, ...]
    logprobs: tuple[float, ...]
    finish_reason: str  # "stop" (end-of-turn token) or "length" (hit max_new_tokens)
    text: str
    image_version: int
    prompt_token_ids: tuple[int, ...]

    def __post_init__(self) -> None:
        if len(self.logprobs) != len(self.token_ids):
            raise ValueError(
                f"len(logprobs)={len(self.logprobs)} != len(token_ids)={len(self.token_ids)}"
            )
        if not self.token_ids:
            raise ValueError("a completion must have at least one token")
        if self.finish_reason not in ("stop", "length"):
            raise ValueError(
                f"finish_reason must be 'stop' or 'length', got {self.finish_reason!r}"
            )
        if not self.prompt_token_ids:
            raise ValueError("a completion must carry the prompt token ids it was sampled from")


@dataclass(frozen=True)
class ScoredGroup:
    """The G completions of one prompt with their rewards. Driver -> Learner.

    Invariant: `len(rewards) == len(completions)`, all completions answer `prompt`.
    """

    prompt: str
    completions: tuple[Completion, ...]
    rewards: tuple[float, ...]
    accuracies: tuple[float, ...] = field(default=())

    def __post_init__(self) -> None:
        if len(self.rewards) != len(self.completions):
            raise ValueError(
                f"len(rewards)={len(self.rewards)} != len(completions)={len(self.completions)}"
            )
        if self.accuracies and len(self.accuracies) != len(self.completions):
            raise ValueError("accuracies, when given, need one value per completion")
        if len({c.request_id for c in self.completions}) > 1:
            raise ValueError("a group's completions must all answer the same request")
        if len({c.prompt_token_ids for c in self.completions}) > 1:
            raise ValueError("a group's completions must share one prompt")


@dataclass(frozen=True)
class TargetSequence:
    """A completion the learner fits without a reward: an example's gold completion
    (`algo.loss=sft`) or a completion sampled for context distillation (`algo.loss=distill`).
    Driver -> Learner.

    `prompt_token_ids` are the student's prompt (the policy being trained) as the engines
    tokenize it, the image placeholder expanded to the image's tokens when the trained policy
    sees the image; `token_ids` the completion, ending with the end-of-turn token when it is
    complete; `teacher_prompt_token_ids` (distill only, else empty) the teacher's prompt: its
    text context, no image. Invariant: both non-empty.
    """

    prompt_token_ids: tuple[int, ...]
    token_ids: tuple[int, ...]
    teacher_prompt_token_ids: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if not self.prompt_token_ids or not self.token_ids:
            raise ValueError("a target sequence needs prompt token ids and at least one token")


@dataclass(frozen=True)
class ImageUpdate:
    """A new version of the trained image. Learner -> Driver -> every RolloutWorker.

    Versions increase by one per learner step; version 0 is the seed image.
    """

    version: int
    png: bytes

    def __post_init__(self) -> None:
        if self.version < 0:
            raise ValueError(f"image version must be >= 0, got {self.version}")
        if not self.png.startswith(b"\x89PNG\r\n\x1a\n"):
            raise ValueError(
                f"ImageUpdate.png is not PNG data (it starts with {self.png[:8]!r}); give the "
                "bytes of a PNG file"
            )


@dataclass(frozen=True)
class AdapterUpdate:
    """A new version of the trained LoRA adapter (`method=lora`, the baseline ART is compared
    with). Learner -> Driver -> every RolloutWorker.

    `weights` is the adapter's state dict in safetensors format (PEFT's key names, as in
    `adapter_model.safetensors`); `config` is its `adapter_config.json`. Versions increase by
    one per learner step; version 0 is the freshly initialized adapter (B = 0: the base model).
    """

    version: int
    weights: bytes
    config: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.version < 0:
            raise ValueError(f"adapter version must be >= 0, got {self.version}")
        if not self.weights or not self.config.get("peft_type") == "LORA":
            raise ValueError("AdapterUpdate needs safetensors weights and a LoRA adapter config")


@dataclass(frozen=True)
class WorkerSettings:
    """What a rollout worker is built from. Driver -> RolloutWorker (the actor's constructor).

    `engine_options` are the engine spec's (shared/engines.py) constructor arguments."""

    engine: str  # rollout.engine: a name of shared.engines.ENGINES
    model_path: str  # the model's folder or hub id (resolved by the driver)
    worker_index: int = 0  # rollout-worker-<index>
    run_id: str = ""  # tags the Ray metrics
    engine_options: dict = field(default_factory=dict)

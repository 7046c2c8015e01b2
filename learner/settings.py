"""The learner's settings: one frozen object, made from the config by the driver
(`learner/driver/cluster.py`: `learner_settings`) and passed whole to every learner replica.

Driver -> Learner (Ray actor constructor). Plain values only (it is pickled to the actor).
"""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class LearnerSettings:
    model_path: str  # the model's folder or hub id (resolved by the driver)
    model_name: str  # model.name: the PNG's metadata and the image-size check
    height: int  # image.height
    width: int  # image.width
    init: str = "gray"  # image.init: the seed picture
    lr: float = 0.05  # learner.lr: Adam's learning rate on the trained tensors
    temperature: float = 1.0  # algo.temperature: logits divided by it
    eps_low: float = 0.2  # algo.eps_low
    eps_high: float = 0.28  # algo.eps_high
    clip_ratio_c: float | None = None  # algo.clip_ratio_c: verl's dual clip (None: off)
    num_minibatches: int = 1  # algo.num_minibatches: optimizer steps per batch
    micro_batch_size: int = 32  # learner.micro_batch_size
    max_tokens_per_micro_batch: int | None = None  # learner.max_tokens_per_micro_batch
    max_grad_norm: float = 0.0  # learner.max_grad_norm (0: no clipping)
    max_staleness: int = 0  # algo.max_staleness: earlier versions kept for stale samples
    rollout_correction: str = "off"  # algo.rollout_correction: off, token, sequence
    rollout_correction_cap: float = 2.0  # algo.rollout_correction_cap
    dtype: str = "float32"  # model.dtype
    device: str = "cpu"  # model.device
    seed: int = 0  # seed: the minibatch split and the noise seed image
    activation_checkpointing: bool = False  # learner.activation_checkpointing
    shared_prefix: bool = True  # learner.shared_prefix
    task_icon: str = "math"  # the task's icon, for image.init=icon:task
    background: str = "white"  # image.background
    method: str = "art"  # method.name: art (pixels) or lora (the baseline)
    lora: dict | None = None  # method.lora, as a plain dict
    with_image: bool = True  # ART, or LoRA with method.with_image
    release_memory: bool = False  # rollout.sleep_mode: hand cached GPU blocks back per update
    rank: int = 0  # this replica's rank (data parallel)
    world_size: int = 1  # learner.num_replicas
    run_id: str = ""  # tags the Ray metrics
    loss: str = "dapo"  # algo.loss: a policy loss, or an objective on target sequences
    loss_agg_mode: str | None = None  # algo.loss_agg_mode (None: the objective's own)
    norm_adv_by_std: bool | None = None  # algo.norm_adv_by_std (None: the loss's own)
    loss_scale_factor: int | None = None  # algo.loss_scale_factor
    adv_estimator: str = "grpo"  # algo.adv_estimator (learner/objectives/advantages.py)
    distill_direction: str = "forward"  # algo.distill.direction
    teacher_model_path: str | None = None  # algo=opd: the teacher model's folder or hub id

    def but(self, **changes) -> LearnerSettings:
        """A copy with `changes` (e.g. another rank)."""
        return replace(self, **changes)

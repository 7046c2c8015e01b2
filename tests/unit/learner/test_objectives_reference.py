"""The policy-gradient objectives against verl's and TRL's own code on the same tensors: the
loss and its gradient with respect to the log-probs.

Neither library is a dependency (verl pins its own stack; TRL's GRPO loss lives inside its
trainer): `make test-reference` downloads their pinned wheels into a cache, unpacks them beside
the project without installing them (no other package changes) and runs this file with
`ART_REFERENCE_REQUIRED=1`, under which a missing library fails instead of skipping. CI runs it.

verl's policy losses are called as registered (`core_algos.get_policy_loss_fn`); TRL's
`GRPOTrainer._compute_loss` is called on a stand-in for the trainer that hands it our log-probs
(its model forward is the only part replaced).
"""

from __future__ import annotations

import importlib
import os
from collections import defaultdict
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from learner.dapo import group_advantages
from learner.objectives import LossSettings, get_adv_estimator, get_policy_loss

REQUIRED = os.environ.get("ART_REFERENCE_REQUIRED") == "1"  # make test-reference: never skip


def importorskip(module: str, reason: str):
    if REQUIRED:
        return importlib.import_module(module)  # an ImportError fails the test
    return pytest.importorskip(module, reason=reason)


B, T, HORIZON = 6, 7, 9


def _tensors(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    lengths = [7, 3, 5, 1, 6, 4]
    mask = torch.zeros(B, T)
    for b, n in enumerate(lengths):
        mask[b, :n] = 1.0
    old = -torch.rand(B, T, generator=gen) * 2.0 - 0.1
    logp = old + torch.randn(B, T, generator=gen) * 0.5  # ratios about 0.3 to 3: every clip
    adv = torch.tensor([1.3, -0.7, 0.4, -1.9, 0.8, -0.2])
    return logp * mask, old * mask, adv, mask  # padding 0, as the learner's


def _ours(name, logp, old, adv, mask, **settings):
    spec = get_policy_loss(name)
    settings.setdefault("loss_agg_mode", spec.loss_agg_mode)
    leaf = logp.clone().requires_grad_(True)
    loss, _ = spec.fn(leaf, old, adv, mask, LossSettings(**settings), None)
    loss.backward()
    return loss.detach(), leaf.grad


def _check(ours, theirs):
    torch.testing.assert_close(ours[0], theirs[0].to(ours[0].dtype), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours[1], theirs[1], rtol=1e-5, atol=1e-6)


# ---- verl -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def verl():
    core_algos = importorskip(
        "verl.trainer.ppo.core_algos", reason="verl is not importable (see the module docstring)"
    )
    from verl.workers.config import ActorConfig

    def run(mode, logp, old, adv, mask, agg, low, high, c=3.0, scale=None):
        config = ActorConfig(
            strategy="fsdp",
            rollout_n=2,
            ppo_micro_batch_size_per_gpu=1,
            clip_ratio_low=low,
            clip_ratio_high=high,
            clip_ratio_c=c,
            loss_agg_mode=agg,
            global_batch_info={} if scale is None else {"loss_scale_factor": scale},
        )
        leaf = logp.clone().requires_grad_(True)
        fn = core_algos.get_policy_loss_fn(mode)
        advantages = adv.unsqueeze(1).expand(B, T) * mask  # verl: per-token advantages
        loss, _ = fn(old, leaf, advantages, mask, agg, config, None)
        loss.backward()
        return loss.detach(), leaf.grad

    run.core_algos = core_algos
    return run


def test_dapo_is_verls_vanilla_loss_with_clip_higher_and_dual_clip(verl):
    args = _tensors()
    ours = _ours("dapo", *args, eps_low=0.2, eps_high=0.28, clip_ratio_c=3.0)
    _check(ours, verl("vanilla", *args, "token-mean", 0.2, 0.28, c=3.0))


def test_grpo_is_verls_vanilla_loss_with_seq_mean_token_mean(verl):
    args = _tensors(1)
    ours = _ours("grpo", *args, eps_low=0.2, eps_high=0.2, clip_ratio_c=3.0)
    _check(ours, verl("vanilla", *args, "seq-mean-token-mean", 0.2, 0.2, c=3.0))


def test_dr_grpo_is_verls_vanilla_loss_with_seq_mean_token_sum_norm(verl):
    args = _tensors(2)
    ours = _ours("dr_grpo", *args, eps_low=0.2, eps_high=0.2, clip_ratio_c=3.0, horizon=HORIZON)
    theirs = verl("vanilla", *args, "seq-mean-token-sum-norm", 0.2, 0.2, c=3.0, scale=HORIZON)
    _check(ours, theirs)


def test_gspo_is_verls_gspo(verl):
    args = _tensors(3)
    ours = _ours("gspo", *args, eps_low=0.05, eps_high=0.08)
    _check(ours, verl("gspo", *args, "seq-mean-token-mean", 0.05, 0.08))


def test_cispo_is_verls_cispo_without_a_lower_cap(verl):
    args = _tensors(4)
    ours = _ours("cispo", *args, eps_high=0.28)
    # verl clamps the weight to [1 - low, 1 + high]: low = 1 leaves it uncapped below
    _check(ours, verl("cispo", *args, "token-mean", 1.0, 0.28))


def test_rloo_advantages_are_verls_rloo_advantages(verl):
    rewards = torch.tensor([[1.0, 0.0, 0.4, 1.0], [0.1, 0.1, 0.1, 0.9], [0.3, 0.3, 0.3, 0.3]])
    ours = get_adv_estimator("rloo")(rewards, False).reshape(-1)
    scores = torch.zeros(12, 3)
    scores[:, -1] = rewards.reshape(-1)
    theirs, _ = verl.core_algos.compute_rloo_outcome_advantage(
        scores, torch.ones(12, 3), np.repeat(np.arange(3), 4)
    )
    torch.testing.assert_close(ours, theirs[:, 0], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("norm_by_std", [True, False])
def test_group_advantages_are_verls_grpo_advantages(verl, norm_by_std):
    rewards = torch.tensor([[1.0, 0.0, 0.4, 1.0], [0.1, 0.1, 0.1, 0.9], [0.3, 0.3, 0.3, 0.3]])
    ours = group_advantages(rewards, norm_by_std=norm_by_std).reshape(-1)
    scores = torch.zeros(12, 3)
    scores[:, -1] = rewards.reshape(-1)
    index = np.repeat(np.arange(3), 4)
    theirs, _ = verl.core_algos.compute_grpo_outcome_advantage(
        scores, torch.ones(12, 3), index, norm_adv_by_std_in_grpo=norm_by_std
    )
    torch.testing.assert_close(ours, theirs[:, 0], rtol=1e-6, atol=1e-6)


# ---- TRL --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trl():
    grpo = importorskip(
        "trl.trainer.grpo_trainer", reason="trl is not importable (see the module docstring)"
    )

    def run(loss_type, logp, old, adv, mask, low, high, level="token"):
        leaf = logp.clone().requires_grad_(True)
        trainer = SimpleNamespace(
            loss_type=loss_type,
            epsilon_low=low,
            epsilon_high=high,
            importance_sampling_level=level,
            max_completion_length=HORIZON,
            beta=0.0,
            top_entropy_quantile=1.0,
            off_policy_mask_threshold=None,
            use_vllm=False,
            aux_loss_enabled=False,
            _entropy_bonus_enabled=False,
            current_gradient_accumulation_steps=1,
            model=SimpleNamespace(training=True),
            args=SimpleNamespace(delta=None, steps_per_generation=1),
            accelerator=SimpleNamespace(
                num_processes=1, gather=lambda x: x, reduce=lambda x, reduction: x
            ),
            _metrics=defaultdict(lambda: defaultdict(list)),
            # the model forward, replaced: our log-probs and no entropies
            _get_per_token_logps_and_entropies=lambda *a, **k: (leaf, torch.zeros(B, T), None),
        )
        inputs = {
            "prompt_ids": torch.ones(B, 2, dtype=torch.long),
            "prompt_mask": torch.ones(B, 2, dtype=torch.long),
            "completion_ids": torch.ones(B, T, dtype=torch.long),
            "completion_mask": mask.long(),
            "advantages": adv,
            "old_per_token_logps": old,
            "num_items_in_batch": mask.sum(),
        }
        loss = grpo.GRPOTrainer._compute_loss(trainer, None, inputs)
        loss.backward()
        return loss.detach(), leaf.grad

    return run


def test_dapo_is_trls_dapo_loss(trl):
    args = _tensors(5)
    _check(_ours("dapo", *args, eps_low=0.2, eps_high=0.28), trl("dapo", *args, 0.2, 0.28))


def test_grpo_is_trls_grpo_loss(trl):
    args = _tensors(6)
    _check(_ours("grpo", *args, eps_low=0.2, eps_high=0.2), trl("grpo", *args, 0.2, 0.2))


def test_dr_grpo_is_trls_dr_grpo_loss(trl):
    args = _tensors(7)
    ours = _ours("dr_grpo", *args, eps_low=0.2, eps_high=0.2, horizon=HORIZON)
    _check(ours, trl("dr_grpo", *args, 0.2, 0.2))


def test_gspo_is_trls_sequence_level_importance_sampling(trl):
    args = _tensors(8)
    ours = _ours("gspo", *args, eps_low=0.05, eps_high=0.08)
    _check(ours, trl("grpo", *args, 0.05, 0.08, level="sequence"))


def test_cispo_is_trls_cispo_loss(trl):
    args = _tensors(9)
    # TRL's epsilon_high is the cap itself: ours is 1 + eps_high
    _check(_ours("cispo", *args, eps_high=0.28), trl("cispo", *args, 0.2, 1.28))

"""The driver's side of an algorithm: what differs between objectives, owned by one class each
(prime-rl's `orchestrator/algo/`: the pipeline never branches on the algorithm's name).

An `Algorithm` says
- what its config must hold (`rules`, checked with the config's own rules at start-up) and the
  defaults it fills into `algo.*` (`resolve`), so that the run's config.yaml says what ran;
- what it needs before any process starts (`prepare`: a text context, a teacher's folder) and
  what the learner needs beyond the config (`learner_settings`);
- what it does once the actors are up (`start`: a teacher's evaluation at step 0);
- what a step's batch is (`batch`: sampled, scored and filtered groups, or target sequences);
- which of its figures are kept per step (`history_keys`) and what the summary reports.
The learner's side of it (the update) is found by `objective` in the learner
(`learner/learner.py`: `make_objective`).

`run` is the driver's `Run` (`learner/driver/train.py`): its config, rollout pool, task,
scorer, prompt sampler, prompt builder, validation slice, state and tracker.
"""

from __future__ import annotations

from typing import Any

from learner.driver.checkpoint import DriverState
from learner.driver.rollouts import StepRollouts
from learner.driver.tracking import mean


class Algorithm:
    # `algo.loss` values it is chosen by (a registered name), and its learner side's name
    name = ""
    min_group_size = 2  # completions per prompt an advantage needs
    samples_ahead = True  # may sample step t + 1 during update t (algo.max_staleness=1)
    history_keys: tuple[str, ...] = ()  # its own per-step figures kept in the checkpoint

    def __init__(self, cfg: Any):
        self.cfg = cfg

    @property
    def objective(self) -> str:
        """The learner's objective (`LearnerSettings.loss`): this algorithm's name."""
        return self.name

    # ---- the config, at start-up ----------------------------------------------------------
    def rules(self, cfg: Any) -> list[tuple[bool, str]]:
        """(holds, what to set) for every rule of this algorithm."""
        algo = cfg.algo
        sequences = self.sequences_per_step(algo)
        return [
            (
                self.samples_ahead or algo.max_staleness == 0,
                f"algo.loss={algo.loss} samples nothing a step ahead: set algo.max_staleness=0",
            ),
            (
                algo.group_size >= self.min_group_size,
                f"algo.group_size={algo.group_size}: groups need >= 2 samples for an advantage"
                if self.min_group_size >= 2
                else f"algo.group_size={algo.group_size}: set >= 1",
            ),
            (
                1 <= algo.num_minibatches <= sequences,
                f"algo.num_minibatches={algo.num_minibatches} must be in [1, {sequences}] (the "
                f"sequences of a step: {self.sequences_formula})",
            ),
        ]

    sequences_formula = "prompts_per_step * group_size"

    def sequences_per_step(self, algo: Any) -> int:
        return algo.prompts_per_step * algo.group_size

    def resolve(self, cfg: Any, max_new_tokens: int) -> None:
        """Fill the `algo.*` defaults this algorithm decides (in the config itself)."""

    # ---- the driver ------------------------------------------------------------------------
    def prepare(self, cfg: Any, task: Any) -> None:
        """What it needs before any process starts (a UserError refuses the run)."""

    def learner_settings(self, cfg: Any) -> dict:
        """`LearnerSettings` fields beyond the config's (a teacher's folder)."""
        return {}

    def start(self, run: Any) -> None:
        """Once the actors are up, before the loop (a new run or a resumed one)."""

    def batch(self, run: Any, step: int) -> StepRollouts:
        raise NotImplementedError

    def summary(self, state: DriverState) -> dict:
        """The summary's fields of this algorithm: the loss's first and last steps."""
        losses = state.history.get("loss", [])
        return {"loss_first5": mean(losses[:5]), "loss_last5": mean(losses[-5:]), "losses": losses}

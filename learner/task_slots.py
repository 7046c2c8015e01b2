"""Many tasks on one learner (a multi-task run, learner/driver/multitask.py): one frozen model,
and per task its own trained image, Adam, version, kept versions, minibatch generator and
skip count: a slot. The Learner's updates act on the active slot, so a task's update is, bit for
bit, the update a learner of that task alone would take from the same samples: no sample of
another task reaches its gradient, and no state of another task its optimizer step."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from learner.pixels import PixelImage
from learner.trained import make_trained
from shared.images import seed_image

# What a slot holds: the Learner's attributes that are one task's.
SLOT_FIELDS = ("trained", "optimizer", "version", "history", "split_rng", "consecutive_skips")


@dataclass
class TaskSlot:
    trained: object
    optimizer: torch.optim.Optimizer
    version: int
    history: dict
    split_rng: torch.Generator
    consecutive_skips: int


class TaskSlots:
    """The Learner's multi-task methods (a mixin: they swap its per-task attributes)."""

    def _slots(self) -> dict[str, TaskSlot]:
        if not hasattr(self, "slots"):
            self.slots, self.active = {}, ""
        return self.slots

    def add_task(self, key: str, init: str, seed: int, task_icon: str = "math") -> int:
        """A task's slot from its seed picture (`init`, as `image.init`) and seed; returns the
        number of tasks."""
        s, slots = self.settings, self._slots()
        if key in slots or (key and key == self.active):
            raise ValueError(f"task {key!r} is on this learner already")
        pixels = seed_image(init, s.height, s.width, seed, task_icon, s.background)
        image = PixelImage.from_uint8(pixels).to(s.device)
        trained = make_trained("art", self.model, image, s.model_name, None, True)
        slots[key] = TaskSlot(
            trained,
            torch.optim.Adam(trained.parameters(), lr=s.lr),
            0,
            {},
            torch.Generator().manual_seed(seed),
            0,
        )
        return len(slots)

    def activate(self, key: str) -> None:
        """Make `key`'s slot the Learner's trained state (the current one kept in its slot)."""
        slots = self._slots()
        if key == self.active:
            return
        if key not in slots:
            raise KeyError(f"no task {key!r} on this learner (add_task first)")
        slots[self.active] = TaskSlot(*(getattr(self, f) for f in SLOT_FIELDS))
        for name, value in zip(SLOT_FIELDS, vars(slots.pop(key)).values(), strict=True):
            setattr(self, name, value)
        self.active = key

    def drop_task(self, key: str) -> None:
        """Forget a task's slot (an add that failed half way); the active one stays."""
        self._slots().pop(key, None)

    def update_tasks(self, batches: Mapping[str, Sequence]) -> dict[str, tuple]:
        """One update per task, each on its own samples only: {task: (metrics, update)}."""
        out = {}
        for key, batch in batches.items():
            self.activate(key)
            out[key] = self.update(batch)
        return out

    def task_call(self, key: str, method: str, *args):
        """A Learner method on one task's slot (image_update, state_dict, load_state_dict)."""
        self.activate(key)
        return getattr(self, method)(*args)

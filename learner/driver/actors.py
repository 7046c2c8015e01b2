"""Stopping rollout worker actors for good: a tensor-parallel worker's placement group (its GPU
bundles) is given back with it. Used by the worker pool (learner/driver/rollouts.py) and the
run's scope (learner/driver/cluster.py)."""

from __future__ import annotations

from ray.util.placement_group import remove_placement_group

# A tensor-parallel worker's placement group, by actor id (every factory of this driver).
PLACEMENT_GROUPS: dict[str, object] = {}


def stop_worker(ray, actor) -> None:
    """Kill a worker for good and give its GPUs back (its placement group, if it has one)."""
    ray.kill(actor, no_restart=True)
    group = PLACEMENT_GROUPS.pop(actor._actor_id.hex(), None)
    if group is not None:
        remove_placement_group(group)

"""The learner replicas as the driver sees them: one handle for one learner or N data-parallel
replicas (`learner.num_replicas`; the all-reduce itself is in `learner/data_parallel.py`).

Every replica gets the same calls with the same arguments (one `ray.put` each) and, with N > 1,
joins one torch.distributed group first. Replica 0 answers for the group: its policy update and
metrics are the run's (every replica computes the same ones). The replicas' trained tensors are
checked equal (a hash) whenever the state is taken, i.e. at every step's checkpoint snapshot.
A replica that dies stops the run like a single learner's death does: `learner_call` in
`learner/driver/train.py` names the last good checkpoint to resume from, with any N.
"""

from __future__ import annotations

from shared.errors import RunStoppedError


class LearnerGroup:
    def __init__(self, ray, replicas: list):
        self.ray, self.replicas = ray, list(replicas)
        if len(self.replicas) > 1:
            address, port = ray.get(self.replicas[0].rendezvous.remote())
            self._all("init_group", address, port)

    def __len__(self) -> int:
        return len(self.replicas)

    def _get_all(self, refs: list) -> list:
        """The results in order; the first failure raises at once (the other replicas may be
        blocked in an all-reduce with the dead one: never wait for them)."""
        pending = list(refs)
        while pending:
            ready, pending = self.ray.wait(pending, num_returns=1)
            self.ray.get(ready)  # raises a replica's error or death
        return self.ray.get(refs)

    def _all(self, method: str, *args) -> list:
        if len(self.replicas) > 1:  # one copy of big arguments in the object store
            args = tuple(self.ray.put(a) for a in args)
        return self._get_all([getattr(r, method).remote(*args) for r in self.replicas])

    def one(self, method: str, *args):
        """A call on replica 0 alone (what does not change the learners' state)."""
        return self.ray.get(getattr(self.replicas[0], method).remote(*args))

    # ---- what the driver calls ---------------------------------------------------------
    def update(self, groups):
        results = self._all("update", groups)
        metrics, update = results[0]
        if len(results) > 1:
            for key in ("learner_time_s", "learner_allreduce_s", "peak_memory_bytes"):
                if key in metrics:
                    metrics[key] = max(m[key] for m, _ in results)
            metrics["learner_replicas"] = float(len(results))
        return metrics, update

    def state_dict(self) -> dict:
        if len(self.replicas) > 1:
            hashes = self._all("parameter_hash")
            if len(set(hashes)) != 1:
                raise RunStoppedError(
                    f"the {len(hashes)} learner replicas hold different parameters (hashes "
                    f"{[h[:12] for h in hashes]}); the last good checkpoint is safe to resume"
                )
        return self.one("state_dict")

    def load_state_dict(self, state: dict) -> None:
        self._all("load_state_dict", state)

    def policy_update(self):
        return self.one("policy_update")

    def image_update(self):
        return self.one("image_update")

    def num_trainable(self) -> int:
        return self.one("num_trainable")

"""Data-parallel learner replicas (`learner.num_replicas` N > 1): how one learner meets the
others, which rows of a minibatch it computes, and the all-reduce of what it computed.

Every replica gets the whole batch and draws the same minibatch split (same seed); replica r
computes the old log-probs and the gradient of its share of each minibatch only (`share`), with
the loss still divided by the minibatch's global token count, so that the sum over replicas is
the one learner's gradient. Only the trained tensors' gradient is all-reduced (for ART: 3 x H x W
floats), with the loss statistics; every replica then takes the same optimizer step (same
gradient, same Adam state), and the old log-probs are all-reduced so that every replica reports
the same metrics. The replicas' trained tensors are compared by hash (`parameter_hash`).
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Sequence
from datetime import timedelta

import torch


class DataParallel:
    """This learner's place among N replicas (rank r of N; N = 1: alone, every call a no-op).

    `rendezvous` (replica 0) opens the TCP store the group meets at, `join` enters the
    torch.distributed group (NCCL on GPUs, gloo on CPUs), `share` deals a minibatch's rows,
    `all_reduce_` sums tensors in place over the replicas and counts the seconds it took
    (`allreduce_s`, the wait for the slowest replica included)."""

    def __init__(self, rank: int = 0, world_size: int = 1, on_cuda: bool = False):
        self.rank, self.world_size, self.on_cuda = rank, world_size, on_cuda
        self.allreduce_s = 0.0  # time in all-reduces (waiting for the slowest replica too)
        self._store = None  # replica 0: the process group's TCP store

    def rendezvous(self) -> tuple[str, int]:
        """Replica 0: the TCP store the replicas' process group meets at, on a port the OS
        picked and this process holds (no other process can take it meanwhile)."""

        # start-up time: a heavy library, loaded when this runs
        import ray

        # start-up time: a heavy library, loaded when this runs
        import torch.distributed as dist

        address = ray.util.get_node_ip_address()
        self._store = dist.TCPStore(
            address,
            0,
            self.world_size,
            is_master=True,
            timeout=timedelta(seconds=600),
            wait_for_workers=False,  # the others connect in join
        )
        return address, self._store.port

    def join(self, address: str, port: int, timeout_s: float = 1800.0) -> int:
        """Join the replicas' torch.distributed group: NCCL on GPUs, gloo on CPUs, over the
        network interface of this node's Ray address (not whatever the hostname resolves to,
        often 127.0.1.1 in images). `timeout_s` bounds every collective: a replica waits
        that long for the slowest one's forward and backward."""

        # start-up time: a heavy library, loaded when this runs
        import ray

        # start-up time: a heavy library, loaded when this runs
        import torch.distributed as dist

        interface = interface_of(ray.util.get_node_ip_address())
        if interface:
            os.environ.setdefault("GLOO_SOCKET_IFNAME", interface)
            os.environ.setdefault("NCCL_SOCKET_IFNAME", interface)
        store = self._store or dist.TCPStore(
            address, port, self.world_size, is_master=False, timeout=timedelta(seconds=600)
        )
        dist.init_process_group(
            "nccl" if self.on_cuda else "gloo",
            store=store,
            rank=self.rank,
            world_size=self.world_size,
            timeout=timedelta(seconds=timeout_s),
        )
        return self.rank

    def share(self, batch, rows: Sequence[int]) -> list[int]:
        """This replica's rows of a minibatch (a `learner.learner.Batch`): longest first,
        dealt in turn, so that every replica gets about the same number of tokens."""
        if self.world_size == 1:
            return list(rows)
        length = {i: len(batch.prompt_ids[i]) + len(batch.token_ids[i]) for i in rows}
        dealt = sorted(rows, key=lambda i: (-length[i], i))
        return sorted(dealt[self.rank :: self.world_size])

    def all_reduce_(self, tensors: Sequence[torch.Tensor]) -> None:
        """Sum in place over the replicas (nothing with one)."""
        if self.world_size == 1:
            return
        # start-up time: a heavy library, loaded when this runs
        import torch.distributed as dist

        start = time.perf_counter()
        for tensor in tensors:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        if self.on_cuda:  # NCCL returns once the op is queued
            torch.cuda.synchronize()
        self.allreduce_s += time.perf_counter() - start


def parameter_hash(tensors: Sequence[torch.Tensor]) -> str:
    """sha256 of the tensors' float32 bytes (replicas must agree at every checkpoint)."""

    digest = hashlib.sha256()
    for t in tensors:
        digest.update(t.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()


def interface_of(address: str) -> str | None:
    """The network interface that holds `address` (psutil comes with Ray), or None."""
    try:
        # optional dependency: its absence is handled below
        import psutil

        for name, addresses in psutil.net_if_addrs().items():
            if any(a.address == address for a in addresses):
                return name
    except Exception:
        return None
    return None

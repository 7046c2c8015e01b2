"""art-bench section c: the broadcast of the PNG vs the model's full weights (`ray.put` + every
worker's `get`) to 1, 2, 4 and 8 workers on another Ray node with its own object store."""

from __future__ import annotations

import logging
import os
import statistics
import time

from learner.bench.common import BenchContext, png
from learner.bench.local_cluster import two_node_cluster
from learner.models import resolve_model_path
from shared.images import seed_image

LETTER = "c"
TITLE = "broadcast: the PNG vs full weights to workers on another Ray node"
logger = logging.getLogger("art.bench")
TARGETS = {"sync_bytes_ratio": 1000.0}  # at least


class Receiver:
    """A stand-in rollout worker on the other node: fetches what is broadcast."""

    def get(self, refs) -> int:
        # start-up time: a heavy library, loaded when this runs
        import ray

        value = ray.get(refs[0])
        if isinstance(value, bytes):
            return len(value)
        return int(sum(a.nbytes for a in value.values()))


def weights_payload(model: str) -> dict:
    """The model's state dict in bfloat16 (what a weight sync ships), as numpy buffers."""
    # start-up time: a heavy library, loaded when this runs
    import torch

    # start-up time: a heavy library, loaded when this runs
    from transformers import AutoModelForImageTextToText

    hf = AutoModelForImageTextToText.from_pretrained(
        resolve_model_path(model), dtype=torch.bfloat16
    )
    seen, out = set(), {}
    for name, tensor in hf.state_dict().items():
        if tensor.data_ptr() in seen:  # tied weights (embedding = lm_head) ship once
            continue
        seen.add(tensor.data_ptr())
        out[name] = tensor.detach().contiguous().view(torch.int16).numpy()
    return out


def bench_sync(models: list[str], png_bytes: dict[str, bytes], workers: tuple, repeats: int):
    # start-up time: a heavy library, loaded when this runs
    import ray

    payloads = {m: weights_payload(m) for m in models}
    biggest = max(sum(a.nbytes for a in p.values()) for p in payloads.values())
    store = int(biggest * 2.5) + 500_000_000
    results = []
    with two_node_cluster({"head_node": 1}, {"remote_node": 100}, 2, store, False) as cluster:
        os.environ["RAY_AUTH_MODE"] = "disabled"
        ray.init(address=cluster["gcs"], log_to_driver=False, _node_ip_address="127.0.0.1")
        try:
            remote = ray.remote(Receiver).options(num_cpus=0, resources={"remote_node": 1})
            pool = [remote.remote() for _ in range(max(workers))]
            ray.get([r.get.remote([ray.put(b"warm")]) for r in pool])
            for model in models:
                for kind, value in (("png", png_bytes[model]), ("weights", payloads[model])):
                    nbytes = len(value) if kind == "png" else sum(a.nbytes for a in value.values())
                    for n in workers:
                        times = []
                        for _ in range(repeats):
                            start = time.perf_counter()
                            ref = ray.put(value)  # a new object: it crosses to the other node
                            got = ray.get([r.get.remote([ref]) for r in pool[:n]])
                            times.append(time.perf_counter() - start)
                            assert got == [nbytes] * n
                            del ref
                        results.append(
                            {"model": model, "what": kind, "workers": n, "bytes": nbytes,
                             "time_s": statistics.median(times)}
                        )  # fmt: skip
        finally:
            ray.shutdown()
    return results


def run(ctx: BenchContext) -> dict:
    logger.info("c. broadcast on a two-node cluster")

    # Noise: the largest PNG of that size (trained images grow towards it; the seed icon
    # compresses to a few KB), so the ratio is a conservative one.
    pngs = {
        m: png(seed_image("noise", *((64, 64) if m == "tiny" else (256, 256)))) for m in ctx.models
    }
    return {"sync": bench_sync(list(ctx.models), pngs, (1, 2, 4, 8), 1 if ctx.quick else 3)}


def format_lines(report: dict) -> list[str]:
    if not report.get("sync"):
        return []
    lines = ["", "c. broadcast to workers on another Ray node (ray.put + every worker's get)"]
    lines.append(
        f"{'model':<22}{'workers':>8}{'PNG bytes':>12}{'PNG s':>9}{'weights bytes':>15}{'weights s':>10}{'bytes x':>10}{'time x':>8}"
    )
    rows = report["sync"]
    for model in dict.fromkeys(r["model"] for r in rows):
        for n in dict.fromkeys(r["workers"] for r in rows):
            png_row = next(
                r for r in rows if r["model"] == model and r["workers"] == n and r["what"] == "png"
            )
            w = next(
                r
                for r in rows
                if r["model"] == model and r["workers"] == n and r["what"] == "weights"
            )
            lines.append(
                f"{model:<22}{n:>8}{png_row['bytes']:>12,}{png_row['time_s']:>9.4f}{w['bytes']:>15,}"
                f"{w['time_s']:>10.3f}{w['bytes'] / png_row['bytes']:>9.0f}x{w['time_s'] / png_row['time_s']:>7.0f}x"
            )
    return lines


def targets(report: dict) -> dict:
    if not report.get("sync"):
        return {}
    model = report["sync"][-1]["model"]  # the largest model measured
    rows = [r for r in report["sync"] if r["workers"] == 1 and r["model"] == model]
    png_bytes = next(r["bytes"] for r in rows if r["what"] == "png")
    weights = next(r["bytes"] for r in rows if r["what"] == "weights")
    ratio = weights / png_bytes
    return {
        "sync_bytes_ratio": (
            ratio,
            TARGETS["sync_bytes_ratio"],
            ratio >= TARGETS["sync_bytes_ratio"],
        )
    }

"""Gradient all-reduce: the pixels' gradient vs a LoRA adapter's vs the full weights'.

    python -m learner.bench.allreduce                       # tiny and Qwen3.5-0.8B (random)
    python -m learner.bench.allreduce --models tiny --size 64 --repeats 5 --json ar.json

Data-parallel learners sum their gradients every step. ART trains one image, so its gradient
is the pixel tensor's, 3 x H x W floats, whatever the model; LoRA's is the adapter's
(rank x (in + out) per adapted linear of the language model, `method.lora` defaults of
`shared/config.py`); full-weight fine-tuning sums every parameter of the model. For each
model, the three sizes come from its config alone (a model built on the `meta` device: no
weights are allocated), then each gradient is all-reduced (SUM, float32) between `world_size`
fresh processes in a `torch.distributed` gloo group on 127.0.0.1: one warm-up, then the
median and minimum of `repeats` timed calls, each after a barrier (the slowest rank's time).

Gradients above `LARGE_BYTES` (1 GiB: the 0.8B model's full gradient, 3.4 GB a process) are
timed once after the warm-up (`--large-repeats`, default 1): each process holds the one
tensor, all-reduced in place, and nothing else of that size. Before spawning, the processes'
tensors must fit in 80% of the available memory. CPU, loopback: the figures say how the three
gradients compare on one machine, not what a network between nodes would give.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import sys
import time
from pathlib import Path

GRADIENTS = ("image", "full", "lora")
BYTES_PER_ELEMENT = 4  # float32
LARGE_BYTES = 2**30
MEMORY_FRACTION = 0.8
JOIN_TIMEOUT_S = 1800.0


# ---- sizes --------------------------------------------------------------------------------
def meta_model(model_name: str):
    """The model of `model_name` (a built model or a folder) on the `meta` device: shapes
    only, read from its config, no weights allocated."""
    # start-up time: a heavy library, loaded when this runs
    import torch

    # start-up time: a heavy library, loaded when this runs
    from transformers import AutoConfig, AutoModelForImageTextToText

    # the spawned ranks import this module: it stays light (no model code at import)
    from learner.models import resolve_model_path

    config = AutoConfig.from_pretrained(resolve_model_path(model_name))
    with torch.device("meta"):
        return AutoModelForImageTextToText.from_config(config)


def is_language_model(module_name: str) -> bool:
    """Whether a module belongs to the language model (the vision tower is `model.visual`)."""
    return "visual" not in module_name.split(".")


def lora_elements(model, rank: int, target_modules) -> int:
    """Parameters a rank-`rank` LoRA adapter adds on the language model's linears named in
    `target_modules` (suffix match, as PEFT does): rank x (in + out) each (A and B)."""
    # start-up time: a heavy library, loaded when this runs
    import torch

    targets = tuple(target_modules)
    return sum(
        rank * (module.in_features + module.out_features)
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear)
        and name.split(".")[-1] in targets
        and is_language_model(name)
    )


def gradient_sizes(model_name: str, height: int, width: int, lora_rank: int = 16) -> dict:
    """Float elements of the three gradients of `model_name` for an H x W image: `image`
    (the pixels, 3 x H x W), `full` (every parameter, tied ones once) and `lora` (a
    rank-`lora_rank` adapter on the default target modules)."""
    from shared.config import LoraSettings  # the spawned ranks import this module: light

    model = meta_model(model_name)
    return {
        "image": 3 * height * width,
        "full": sum(p.numel() for p in model.parameters()),
        "lora": lora_elements(model, lora_rank, LoraSettings().target_modules),
    }


# ---- all-reduce ---------------------------------------------------------------------------
def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def available_bytes() -> int | None:
    """MemAvailable of /proc/meminfo in bytes (None off Linux)."""
    try:
        text = Path("/proc/meminfo").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return None


def check_memory(num_elements: int, world_size: int) -> None:
    need = num_elements * BYTES_PER_ELEMENT * world_size
    have = available_bytes()
    if have is not None and need > MEMORY_FRACTION * have:
        raise MemoryError(
            f"all-reducing {num_elements:,} floats between {world_size} processes needs "
            f"{need / 2**30:.1f} GiB, more than {MEMORY_FRACTION:.0%} of the "
            f"{have / 2**30:.1f} GiB available; free memory or pass a smaller model "
            "(--models tiny)"
        )


def peak_rss_mib() -> float:
    """This process's peak RSS (VmHWM) in MiB; 0 off Linux."""
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return 0.0
    for line in text.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def allreduce_worker(
    rank: int, world_size: int, port: int, num_elements: int, repeats: int, queue
) -> None:
    """One rank: join the gloo group, all-reduce one float32 tensor in place (one warm-up,
    then `repeats` timed calls after a barrier each), and put its times on `queue`."""
    # start-up time: a heavy library, loaded when this runs
    import torch

    # start-up time: a heavy library, loaded when this runs
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size
    )
    try:
        grad_N = torch.ones(num_elements, dtype=torch.float32)
        dist.all_reduce(grad_N, op=dist.ReduceOp.SUM)  # warm-up
        if num_elements and grad_N[0].item() != world_size:
            raise RuntimeError(f"rank {rank}: all-reduce gave {grad_N[0].item()}, not {world_size}")
        times = []
        for _ in range(repeats):
            dist.barrier()
            start = time.perf_counter()
            dist.all_reduce(grad_N, op=dist.ReduceOp.SUM)
            times.append(time.perf_counter() - start)
        del grad_N
        queue.put({"rank": rank, "times": times, "peak_rss_mib": peak_rss_mib()})
        dist.barrier()
    finally:
        dist.destroy_process_group()


def measure_allreduce(num_elements: int, repeats: int = 3, world_size: int = 2) -> dict:
    """All-reduce time of `num_elements` float32 between `world_size` fresh processes (gloo,
    127.0.0.1); per timed call, the slowest rank's time."""
    # start-up time: a heavy library, loaded when this runs
    import torch.multiprocessing as mp

    if repeats < 1 or world_size < 2:
        raise ValueError(f"repeats={repeats}, world_size={world_size}: need >= 1 and >= 2")
    check_memory(num_elements, world_size)
    ctx = mp.get_context("spawn")
    queue, port = ctx.SimpleQueue(), free_port()
    procs = [
        ctx.Process(
            target=allreduce_worker, args=(rank, world_size, port, num_elements, repeats, queue)
        )
        for rank in range(world_size)
    ]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(JOIN_TIMEOUT_S)
    failed = [(i, p.exitcode) for i, p in enumerate(procs) if p.exitcode != 0]
    for proc in procs:
        if proc.is_alive():
            proc.kill()
    if failed:
        raise RuntimeError(
            f"all-reduce of {num_elements:,} floats: ranks (rank, exit code) {failed} failed "
            "(-9: killed, likely out of memory; see their stderr above)"
        )
    results = [queue.get() for _ in procs]
    slowest = [max(times) for times in zip(*(r["times"] for r in results), strict=True)]
    return summarize(num_elements, slowest, max(r["peak_rss_mib"] for r in results))


def summarize(num_elements: int, times: list[float], peak_rss: float) -> dict:
    nbytes = BYTES_PER_ELEMENT * num_elements
    median = statistics.median(times)
    return {
        "elements": num_elements,
        "bytes": nbytes,
        "seconds_median": median,
        "seconds_min": min(times),
        "gbps": nbytes / median / 1e9 if median > 0 else float("inf"),
        "repeats": len(times),
        "peak_rss_mib": round(peak_rss, 1),
    }


# ---- the benchmark ------------------------------------------------------------------------
def bench_allreduce(
    models=("tiny", "qwen3_5_0_8b_random"),
    size: tuple[int, int] = (256, 256),
    repeats: int = 3,
    world_size: int = 2,
    large_repeats: int = 1,
) -> dict:
    """For each model: the three gradients' sizes and all-reduce figures, and the ratios
    full / image and lora / image of their bytes and times. Gradients above `LARGE_BYTES`
    are timed `large_repeats` times."""
    height, width = size
    report = {"size": [height, width], "world_size": world_size, "backend": "gloo"}
    report["models"] = {}
    for model in models:
        sizes = gradient_sizes(model, height, width)
        figures = {}
        for kind in GRADIENTS:
            large = sizes[kind] * BYTES_PER_ELEMENT > LARGE_BYTES
            figures[kind] = measure_allreduce(
                sizes[kind], large_repeats if large else repeats, world_size
            )
            print(f"  {model:<20} {kind:<6} {figures[kind]['seconds_median']:.4f} s", flush=True)
        report["models"][model] = {"gradients": figures, "ratios": ratios(figures)}
    return report


def ratios(figures: dict) -> dict:
    """full / image and lora / image, of bytes and of median time."""
    image = figures["image"]
    return {
        f"{kind}_over_image": {
            "bytes": figures[kind]["bytes"] / image["bytes"],
            "seconds": figures[kind]["seconds_median"] / image["seconds_median"],
        }
        for kind in ("full", "lora")
    }


def format_table(report: dict) -> str:
    height, width = report["size"]
    lines = [
        f"gradient all-reduce (SUM, float32, {report['backend']}, {report['world_size']} "
        f"processes on 127.0.0.1), {height}x{width} image",
        f"{'model':<20} {'gradient':<8} {'elements':>13} {'MB':>10} {'seconds':>9} "
        f"{'GB/s':>6} {'bytes vs image':>15} {'time vs image':>14}",
    ]
    for model, entry in report["models"].items():
        image = entry["gradients"]["image"]
        for kind, fig in entry["gradients"].items():
            timed = f"{fig['seconds_median']:.4f}" + ("*" if fig["repeats"] == 1 else "")
            lines.append(
                f"{model:<20} {kind:<8} {fig['elements']:>13,} {fig['bytes'] / 1e6:>10.2f} "
                f"{timed:>9} {fig['gbps']:>6.2f} {times(fig['bytes'] / image['bytes']):>15} "
                f"{times(fig['seconds_median'] / image['seconds_median']):>14}"
            )
    lines.append("seconds: median of the timed calls (the slowest rank); *: timed once")
    return "\n".join(lines)


def times(ratio: float) -> str:
    """A ratio as `1,234x` (or `0.16x` below 100)."""
    return f"{ratio:,.0f}x" if ratio >= 100 else f"{ratio:.2f}x"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="tiny,qwen3_5_0_8b_random")
    parser.add_argument("--size", type=int, default=256, help="image height = width")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--large-repeats",
        type=int,
        default=1,
        help=f"timed calls for gradients above {LARGE_BYTES / 2**30:.0f} GiB",
    )
    parser.add_argument("--world-size", type=int, default=2)
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    args = parser.parse_args(argv)
    report = bench_allreduce(
        tuple(args.models.split(",")),
        (args.size, args.size),
        args.repeats,
        args.world_size,
        args.large_repeats,
    )
    print(format_table(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

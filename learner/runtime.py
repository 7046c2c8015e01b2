"""What the training and evaluation drivers share: Ray, actors, broadcast, MLflow.

The drivers orchestrate both sides but import neither side's package: worker and learner
classes are created from their import paths (`rollout.worker_cls`, `LEARNER_CLS`).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import hydra
from omegaconf import OmegaConf

LEARNER_CLS = "learner.learner.Learner"
CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")
# Quiet, per-process settings every actor inherits.
ACTOR_ENV = {"TRANSFORMERS_VERBOSITY": "error", "TOKENIZERS_PARALLELISM": "false"}


def resolve_model_path(name: str) -> str:
    """'tiny' -> the cached embedded model (built once); anything else is passed through."""
    if name == "tiny":
        from learner.tiny_model import ensure_tiny_model

        return str(ensure_tiny_model())
    return name


def generate_across_workers(ray, workers, requests, sampling) -> list[list]:
    """Split requests over the workers (contiguous chunks), gather groups in request order."""
    per = math.ceil(len(requests) / len(workers))
    chunks = [requests[i * per : (i + 1) * per] for i in range(len(workers))]
    futures = [w.generate.remote(c, sampling) for w, c in zip(workers, chunks, strict=True) if c]
    return [group for result in ray.get(futures) for group in result]


def start_ray(cfg):
    """Returns (ray, whether this call started it)."""
    import ray

    if ray.is_initialized():
        return ray, False
    env_vars = dict(ACTOR_ENV)
    if os.environ.get("ART_CACHE_DIR"):
        env_vars["ART_CACHE_DIR"] = os.environ["ART_CACHE_DIR"]
    env = {"env_vars": env_vars}
    if cfg.cluster.address:
        ray.init(address=cfg.cluster.address, runtime_env=env, log_to_driver=True)
    else:
        ray.init(
            num_cpus=cfg.cluster.num_cpus,
            include_dashboard=cfg.cluster.include_dashboard,
            runtime_env=env,
            log_to_driver=True,
        )
    return ray, True


def create_learner(cfg, ray, model_path: str):
    from hydra.utils import get_class

    learner_cls = ray.remote(get_class(LEARNER_CLS))
    return learner_cls.options(
        name="learner", num_cpus=cfg.learner.num_cpus, num_gpus=cfg.learner.num_gpus
    ).remote(
        model_path=model_path,
        model_name=cfg.model.name,
        height=cfg.image.height,
        width=cfg.image.width,
        init=cfg.image.init,
        lr=cfg.learner.lr,
        temperature=cfg.algo.temperature,
        eps_low=cfg.algo.eps_low,
        eps_high=cfg.algo.eps_high,
        num_minibatches=cfg.algo.num_minibatches,
        micro_batch_size=cfg.learner.micro_batch_size,
        max_grad_norm=cfg.learner.max_grad_norm,
        dtype=cfg.model.dtype,
        device=cfg.model.device,
        seed=cfg.seed,
    )


def create_workers(cfg, ray, model_path: str) -> list:
    """`rollout.num_workers` RolloutWorker actors named rollout-worker-<i>, each one engine."""
    from hydra.utils import get_class

    worker_cls = ray.remote(get_class(cfg.rollout.worker_cls))
    engine_options = {"dtype": cfg.rollout.dtype}
    if cfg.rollout.engine == "vllm":
        engine_options.update(
            gpu_memory_utilization=cfg.rollout.gpu_memory_utilization,
            max_model_len=cfg.rollout.max_model_len,
            seed=cfg.seed,
        )
    return [
        worker_cls.options(
            name=f"rollout-worker-{i}",
            num_cpus=cfg.rollout.num_cpus_per_worker,
            num_gpus=cfg.rollout.num_gpus_per_worker,
        ).remote(engine=cfg.rollout.engine, model_path=model_path, worker_index=i, **engine_options)
        for i in range(cfg.rollout.num_workers)
    ]


def create_actors(cfg, ray, model_path: str):
    return create_learner(cfg, ray, model_path), create_workers(cfg, ray, model_path)


def prompt_builder(cfg, model_path: str):
    """`prompt_for(example, with_image=True) -> str`: the one prompt rendering used by
    training, periodic evaluation and art-eval (image first, then the task's question)."""
    from transformers import AutoProcessor

    from shared.prompts import render_prompt

    templater = AutoProcessor.from_pretrained(model_path)

    def prompt_for(example, with_image: bool = True) -> str:
        return render_prompt(
            templater,
            example.question,
            cfg.task.system_prompt,
            cfg.task.enable_thinking,
            with_image=with_image,
        )

    return prompt_for


def broadcast(ray, workers, update) -> None:
    """One copy of the PNG into the object store; every worker swaps to it."""
    ref = ray.put(update.png)
    versions = ray.get([w.set_image.remote(update.version, ref) for w in workers])
    assert all(v == update.version for v in versions), versions


def setup_mlflow(cfg, run_name: str):
    """Local default: a SQLite store and an artifact folder under the project root."""
    import mlflow

    root = Path(hydra.utils.get_original_cwd() if _in_hydra() else ".")
    uri = cfg.logging.tracking_uri
    if "://" not in uri:  # a bare path: a local SQLite file
        uri = "sqlite:///" + str(root.joinpath(uri).resolve())
    mlflow.set_tracking_uri(uri)
    if mlflow.get_experiment_by_name(cfg.logging.experiment) is None:
        artifacts = cfg.logging.artifact_location
        if artifacts and "://" not in artifacts:
            artifacts = root.joinpath(artifacts).resolve().as_uri()
        mlflow.create_experiment(cfg.logging.experiment, artifact_location=artifacts or None)
    mlflow.set_experiment(cfg.logging.experiment)
    run = mlflow.start_run(run_name=run_name)
    flat = _flatten(OmegaConf.to_container(cfg, resolve=True))
    mlflow.log_params({k: str(v)[:500] for k, v in flat.items() if k != "run_dir"})
    return mlflow, run


def _in_hydra() -> bool:
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.initialized()


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out

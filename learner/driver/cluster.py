"""Ray for the driver: start or join, check placement, create the actors, close a run.

The learner actor is `learner.learner.Learner`; the rollout worker class comes from its import
path (`rollout.worker_cls`) because `learner/` never imports `rollout_worker/`.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from omegaconf import OmegaConf, open_dict

from learner.driver.actors import PLACEMENT_GROUPS, stop_worker
from learner.driver.algorithms import algorithm_for
from learner.driver.cli import handle_sigterm
from learner.learner import Learner
from learner.settings import LearnerSettings
from shared.config import learner_gpus
from shared.engines import engine_spec
from shared.errors import UserError
from shared.messages import WorkerSettings
from shared.tasks import task_icon
from shared.tasks.entrypoints import absolute_entry

logger = logging.getLogger("art.cluster")
# Quiet, per-process settings every actor inherits.
ACTOR_ENV = {"TRANSFORMERS_VERBOSITY": "error", "TOKENIZERS_PARALLELISM": "false"}


def actor_env() -> dict[str, str]:
    """Environment variables every actor gets (quiet libraries, the tiny-model cache)."""
    env_vars = dict(ACTOR_ENV)
    if os.environ.get("ART_CACHE_DIR"):
        env_vars["ART_CACHE_DIR"] = os.environ["ART_CACHE_DIR"]
    return env_vars


def check_ray_address(address: str, timeout_s: float = 10.0) -> None:
    """Refuse at once a `host:port` Ray address that does not answer (ray.init would wait)."""

    if address in ("auto", "local") or "://" in address and not address.startswith("ray://"):
        return
    hostport = address.removeprefix("ray://")
    host, _, port = hostport.rpartition(":")
    if not host:
        host, port = hostport, "10001" if address.startswith("ray://") else "6379"
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            return
    except (OSError, ValueError) as err:
        raise UserError(
            f"the Ray cluster at cluster.address={address} does not answer ({err}); start it "
            "(`ray start --head`, `make ray-up-local`), fix the address, or set "
            "cluster.address=null for a Ray instance inside this process"
        ) from err


def worker_python(cfg) -> str | None:
    """The interpreter the rollout worker actors run in, or None for the driver's own
    (`rollout.python`; see shared/config.py)."""
    choice = cfg.rollout.python
    if choice in (None, "", "self"):
        return None
    if choice != "auto":
        if not cfg.cluster.address and not Path(choice).exists():
            raise UserError(
                f"rollout.python={choice} does not exist; give the python of an environment "
                "with vLLM (`make install-vllm` builds .venv-vllm), or rollout.python=auto"
            )
        return choice
    return engine_spec(cfg.rollout.engine).python(cfg)  # the engine's own choice


# Ray leaves CUDA_VISIBLE_DEVICES alone for an actor with no GPU (it sees every GPU): an actor
# placed on the CPU is told so, so that no library picks GPU 0 outside Ray's accounting.
NO_GPU = {"CUDA_VISIBLE_DEVICES": ""}


def worker_runtime_env(cfg) -> dict | None:
    """The rollout workers' own runtime env: their interpreter, when not the driver's, and no
    GPU when they have none. Ray merges it with the job's (working_dir, env_vars stay)."""
    env: dict = {}
    python = worker_python(cfg)
    if python and python != sys.executable:
        env["py_executable"] = python
    if not cfg.rollout.num_gpus_per_worker:
        env["env_vars"] = dict(NO_GPU)
    return env or None


def resolve_rollout_gpus(cfg, ray) -> str:
    """`rollout.num_gpus_per_worker=null` becomes 1 where the cluster has GPUs (or may get
    them: `cluster.check_resources=false`), else 0, in the config so that the run's
    config.yaml says what ran. Returns the workers' device: cuda with GPUs, else cpu."""
    if cfg.rollout.num_gpus_per_worker is None:
        has_gpus = ray.cluster_resources().get("GPU", 0) > 0 or not cfg.cluster.check_resources
        with open_dict(cfg):
            cfg.rollout.num_gpus_per_worker = 1 if has_gpus else 0
        logger.info(
            "rollout workers on %s (rollout.num_gpus_per_worker=%d)",
            "GPUs" if has_gpus else "the CPU",
            cfg.rollout.num_gpus_per_worker,
        )
    return "cuda" if cfg.rollout.num_gpus_per_worker > 0 else "cpu"


def start_ray(cfg):
    """Returns (ray, whether this call started it)."""
    # start-up time: a heavy library, loaded when this runs
    import ray

    if ray.is_initialized():
        return ray, False
    if cfg.cluster.address:
        check_ray_address(cfg.cluster.address)
        # Inside `ray job submit` the job's runtime env (working_dir, env_vars from art-submit)
        # applies to every actor; passing another one here would replace it.
        try:
            ray.init(address=cfg.cluster.address, log_to_driver=True)
        except ConnectionError as err:
            raise UserError(
                f"no Ray cluster to join at cluster.address={cfg.cluster.address} ({err}); start "
                "one (`make ray-up-local`) or set cluster.address=null"
            ) from err
    else:
        env = {"env_vars": actor_env()}
        ray.init(
            num_cpus=cfg.cluster.num_cpus,
            include_dashboard=cfg.cluster.include_dashboard,
            runtime_env=env,
            log_to_driver=True,
        )

    handle_sigterm()  # ray.init put its own in (sys.exit(15)): SIGTERM saves and exits 143
    return ray, True


class PlacementError(UserError, RuntimeError):
    """The cluster cannot place what the config asks for; the message says what and why."""


def actor_requests(cfg) -> dict[str, dict[str, float]]:
    """Ray resources each actor asks for, by actor name."""
    learner = {"CPU": cfg.learner.num_cpus, "GPU": learner_gpus(cfg), **cfg.learner.resources}
    worker = {
        "CPU": cfg.rollout.num_cpus_per_worker,
        "GPU": cfg.rollout.num_gpus_per_worker,
        **cfg.rollout.resources,
    }
    tp = cfg.rollout.tensor_parallel_size
    if tp > 1:  # tensor parallel: tp GPUs per worker, on one node (tensor_parallel_plan)
        worker["GPU"] = float(cfg.rollout.num_gpus_per_worker or 0) * tp
    requests = {name: dict(learner) for name in learner_names(cfg.learner.num_replicas)}
    requests.update({f"rollout-worker-{i}": dict(worker) for i in range(cfg.rollout.num_workers)})
    return {name: {k: float(v) for k, v in r.items() if v} for name, r in requests.items()}


def learner_names(replicas: int) -> list[str]:
    """The learner actors' names: `learner` (replica 0, the one that answers for the group),
    then `learner-1` ... `learner-<N-1>`."""
    return ["learner"][:replicas] + [f"learner-{r}" for r in range(1, replicas)]


def check_placement(requests: dict[str, dict[str, float]], nodes: list[dict]) -> None:
    """Refuse, with numbers, what the alive nodes cannot hold: totals and each single actor."""
    alive = [n for n in nodes if n.get("Alive", True)]
    totals: dict[str, float] = {}
    for node in alive:
        for key, value in node["Resources"].items():
            totals[key] = totals.get(key, 0.0) + value
    asked: dict[str, float] = {}
    for request in requests.values():
        for key, value in request.items():
            asked[key] = asked.get(key, 0.0) + value
    problems = []
    for key, value in sorted(asked.items()):
        if value > totals.get(key, 0.0) + 1e-9:
            per_actor = ", ".join(f"{n} {r[key]:g}" for n, r in requests.items() if r.get(key))
            per_node = ", ".join(
                f"node {n['NodeID'][:8]} {n['Resources'].get(key, 0):g}" for n in alive
            )
            problems.append(
                f"asked for {value:g} {key} in all ({per_actor}), the cluster has "
                f"{totals.get(key, 0.0):g} {key} ({per_node})"
            )
    for name, request in requests.items():
        if problems:  # the totals already say what is missing
            break
        if not any(all(n["Resources"].get(k, 0.0) >= v for k, v in request.items()) for n in alive):
            problems.append(f"no single node can hold {name}, which asks for {request}")
    if problems:
        raise PlacementError(
            "the cluster cannot place the actors: "
            + "; ".join(problems)
            + ". Lower rollout.num_workers or the per-actor resources, or add nodes "
            "(cluster.check_resources=false skips this check on autoscaling clusters)."
        )


def wait_until_started(ray, actors: dict[str, object], timeout_s: float, optional: int = 0) -> None:
    """Block until every actor's constructor ran, except that up to `optional` of the actors
    whose name starts with rollout-worker may still be starting (rollout.min_workers: they
    join later); name the ones still pending at the timeout."""

    refs = {name: actor.__ray_ready__.remote() for name, actor in actors.items()}
    workers = {n for n in refs if n.startswith("rollout-worker")}
    deadline = time.monotonic() + timeout_s
    pending = list(refs.values())
    while True:
        ready_set = set(refs.values()) - set(pending)
        ray.get(list(ready_set))  # re-raise constructor errors
        waiting = [n for n, r in refs.items() if r not in ready_set]
        if not set(waiting) - workers and len(waiting) <= optional:
            return
        left = deadline - time.monotonic()
        if left <= 0:
            break
        _, pending = ray.wait(pending, num_returns=len(pending), timeout=min(left, 5.0))
    some = f"; {len(workers) - optional} workers were needed (rollout.min_workers)"
    raise PlacementError(
        f"actors {waiting} did not start within {timeout_s:g}s (cluster.actor_start_timeout_s"
        f"{some if optional else ''}); the cluster has {ray.cluster_resources()} and "
        f"{ray.available_resources()} available"
    )


def create_learners(cfg, ray, model_path: str, run_id: str = "") -> list:
    """`learner.num_replicas` learner actors (data parallel: rank r of N)."""
    replicas = cfg.learner.num_replicas
    return [
        create_learner(cfg, ray, model_path, rank, replicas, run_id) for rank in range(replicas)
    ]


def create_learner(cfg, ray, model_path: str, rank: int = 0, replicas: int = 1, run_id: str = ""):
    learner_cls = ray.remote(Learner)
    return learner_cls.options(
        name=learner_names(replicas)[rank],
        num_cpus=cfg.learner.num_cpus,
        num_gpus=learner_gpus(cfg),
        resources=dict(cfg.learner.resources) or None,
        runtime_env=None if learner_gpus(cfg) else {"env_vars": dict(NO_GPU)},
    ).remote(learner_settings(cfg, model_path, rank, replicas, run_id))


def learner_settings(
    cfg, model_path: str, rank: int = 0, replicas: int = 1, run_id: str = ""
) -> LearnerSettings:
    """The Learner's settings from the config (replica `rank` of `replicas`), with what the
    algorithm adds (its learner-side objective, a teacher's folder)."""
    algorithm = algorithm_for(cfg)
    return LearnerSettings(
        model_path=model_path,
        model_name=cfg.model.name,
        height=cfg.image.height,
        width=cfg.image.width,
        init=cfg.image.init,
        lr=cfg.learner.lr,
        temperature=cfg.algo.temperature,
        eps_low=cfg.algo.eps_low,
        eps_high=cfg.algo.eps_high,
        clip_ratio_c=cfg.algo.clip_ratio_c,
        max_staleness=cfg.algo.max_staleness,
        rollout_correction=cfg.algo.rollout_correction,
        rollout_correction_cap=cfg.algo.rollout_correction_cap,
        num_minibatches=cfg.algo.num_minibatches,
        micro_batch_size=cfg.learner.micro_batch_size,
        max_tokens_per_micro_batch=cfg.learner.max_tokens_per_micro_batch,
        max_grad_norm=cfg.learner.max_grad_norm,
        dtype=cfg.model.dtype,
        device=cfg.model.device,
        seed=cfg.seed,
        activation_checkpointing=cfg.learner.activation_checkpointing,
        shared_prefix=cfg.learner.shared_prefix,
        task_icon=task_icon(cfg.task.name),
        background=cfg.image.background,
        method=cfg.method.name,
        lora=OmegaConf.to_container(cfg.method.lora, resolve=True),
        with_image=cfg.method.with_image,
        release_memory=bool(cfg.rollout.sleep_mode),
        rank=rank,
        world_size=replicas,
        run_id=run_id,
        loss=algorithm.objective,
        loss_agg_mode=cfg.algo.loss_agg_mode,
        norm_adv_by_std=cfg.algo.norm_adv_by_std,
        loss_scale_factor=cfg.algo.loss_scale_factor,
        adv_estimator=absolute_entry(cfg.algo.adv_estimator),
        distill_direction=cfg.algo.distill.direction,
        **algorithm.learner_settings(cfg),
    )


def engine_options(cfg, device: str, lora_rank: int | None = None) -> dict:
    """The keyword arguments of the workers' engine (the engine's spec, shared/engines.py)."""
    return engine_spec(cfg.rollout.engine).options(cfg, device, lora_rank)


def tensor_parallel_plan(cfg) -> dict | None:
    """How a worker with `rollout.tensor_parallel_size=k > 1` is placed (None for k = 1): its
    own placement group of one bundle with k GPUs (STRICT_PACK: the k GPUs of one node, where
    vLLM's tensor-parallel all-reduces stay on NVLink), reserved as a whole before the actor
    starts; the actor takes all of them and vLLM runs its k GPU processes inside it
    (`distributed_executor_backend="mp"`, rollout_worker/vllm_engine.py)."""
    k = cfg.rollout.tensor_parallel_size
    if k == 1:
        return None
    if not cfg.rollout.num_gpus_per_worker:
        raise UserError(
            f"rollout.tensor_parallel_size={k} shards vLLM over GPUs, and the workers have none "
            f"(rollout.num_gpus_per_worker={cfg.rollout.num_gpus_per_worker}; the cluster has "
            "no GPU, or it was set to 0): set rollout.tensor_parallel_size=1"
        )
    gpus = float(cfg.rollout.num_gpus_per_worker) * k
    bundle = {
        "CPU": float(cfg.rollout.num_cpus_per_worker),
        "GPU": gpus,
        **{key: float(v) for key, v in cfg.rollout.resources.items()},
    }
    return {"bundles": [bundle], "strategy": "STRICT_PACK", "actor_num_gpus": gpus}


def worker_factory(cfg, ray, model_path: str, lora_rank: int | None = None, run_id: str = ""):
    """`make(index) -> actor`: one RolloutWorker actor named rollout-worker-<index>, one
    engine (elastic runs start more later, learner/driver/scale.py)."""
    # start-up time: a heavy library, loaded when this runs
    from hydra.utils import get_class

    worker_cls = ray.remote(get_class(cfg.rollout.worker_cls))
    rollout = cfg.rollout
    device = resolve_rollout_gpus(cfg, ray)
    options = engine_options(cfg, device, lora_rank)
    runtime_env = worker_runtime_env(cfg)
    if runtime_env and "py_executable" in runtime_env:
        logger.info("rollout workers run in %s", runtime_env["py_executable"])
    tp = tensor_parallel_plan(cfg)

    def make(index: int):
        placement = {"num_gpus": rollout.num_gpus_per_worker}
        if tp is not None:
            # start-up time: a heavy library, loaded when this runs
            from ray.util.placement_group import placement_group

            # start-up time: a heavy library, loaded when this runs
            from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

            group = placement_group(
                tp["bundles"], strategy=tp["strategy"], name=f"rollout-worker-{index}"
            )
            placement = {
                "num_gpus": tp["actor_num_gpus"],
                "scheduling_strategy": PlacementGroupSchedulingStrategy(
                    group, placement_group_bundle_index=0
                ),
            }
        actor = worker_cls.options(
            name=f"rollout-worker-{index}",
            max_restarts=rollout.max_restarts,
            max_task_retries=0,  # the driver re-sends a dead worker's chunk itself
            num_cpus=rollout.num_cpus_per_worker,
            resources=(dict(rollout.resources) or None) if tp is None else None,  # in the bundles
            runtime_env=runtime_env,
            **placement,
        ).remote(WorkerSettings(rollout.engine, model_path, index, run_id, options))
        if tp is not None:
            PLACEMENT_GROUPS[actor._actor_id.hex()] = group
        return actor

    return make


def create_workers(
    cfg, ray, model_path: str, lora_rank: int | None = None, run_id: str = ""
) -> list:
    """`rollout.num_workers` RolloutWorker actors named rollout-worker-<i>, each one engine."""
    make = worker_factory(cfg, ray, model_path, lora_rank, run_id)
    return [make(i) for i in range(cfg.rollout.num_workers)]


def create_actors(
    cfg,
    ray,
    model_path: str,
    with_learner: bool = True,
    lora_rank: int | None = None,
    run_id: str = "",
):
    """Check placement, create the learner (optional; with `learner.num_replicas` > 1 a list
    of replicas) and the workers, and wait until the learners and `rollout.min_workers`
    workers started (the others join the pool when they are up)."""
    resolve_rollout_gpus(cfg, ray)  # before the GPUs are counted
    requests = actor_requests(cfg)
    if not with_learner:
        for name in learner_names(cfg.learner.num_replicas):
            requests.pop(name)
    if cfg.cluster.check_resources:
        check_placement(requests, ray.nodes())
    actors: dict[str, object] = {}
    timeout = cfg.cluster.actor_start_timeout_s
    need = cfg.rollout.min_workers or cfg.rollout.num_workers
    learners: list = []
    try:
        if cfg.cluster.single_gpu:  # vLLM first: it takes its share of the free memory
            workers = create_workers(cfg, ray, model_path, lora_rank, run_id)
            actors.update({f"rollout-worker-{i}": w for i, w in enumerate(workers)})
            wait_until_started(ray, actors, timeout)
            learners = create_learners(cfg, ray, model_path, run_id) if with_learner else []
        else:
            learners = create_learners(cfg, ray, model_path, run_id) if with_learner else []
            workers = create_workers(cfg, ray, model_path, lora_rank, run_id)
            actors.update({f"rollout-worker-{i}": w for i, w in enumerate(workers)})
        actors.update(zip(learner_names(len(learners)), learners, strict=True))
        wait_until_started(ray, actors, timeout, optional=len(workers) - need)
    except BaseException:
        for name, actor in actors.items():  # leave nothing pending in the cluster
            stop_worker(ray, actor) if name.startswith("rollout-worker") else ray.kill(actor)
        for actor in learners:
            ray.kill(actor)
        raise
    if not with_learner:
        return None, workers
    return (learners[0] if len(learners) == 1 else learners), workers


def start_actors(
    cfg,
    model_path: str,
    with_learner: bool = True,
    lora_rank: int | None = None,
    run_id: str = "",
):
    """Ray started or joined and every actor running: (ray, owns_ray, learner, workers). On a
    failure (placement refused, an actor that cannot start) a Ray instance this call started is
    shut down again."""
    ray, owns_ray = start_ray(cfg)
    try:
        learner, workers = create_actors(cfg, ray, model_path, with_learner, lora_rank, run_id)
    except BaseException:
        if owns_ray:
            ray.shutdown()
        raise
    return ray, owns_ray, learner, workers


def placement(ray, learners: list, workers: list, names: dict | None = None) -> dict[str, str]:
    """Node id of every actor, for the summary and the logs (`names`: actor -> name)."""
    actors = [*learners, *workers]
    default = learner_names(len(learners)) + [f"rollout-worker-{i}" for i in range(len(workers))]
    infos = ray.get([a.info.remote() for a in actors])
    return {
        (names or {}).get(actor, name): info["node_id"]
        for actor, name, info in zip(actors, default, infos, strict=True)
    }


@contextmanager
def run_scope(ray, owns_ray: bool, actors, tracker):
    """Close a driver run either way: the MLflow run (learner/driver/observer.py) FINISHED,
    FAILED, or KILLED after an interrupt or SIGTERM (then it waits at most 5 s for the store:
    a scheduler's grace period is short), actors killed (a list, or a callable giving the list
    at the end: elastic pools change theirs), and the Ray instance shut down if this process
    started it."""
    try:
        yield
        tracker.end_run()
    except BaseException as err:
        stopped = isinstance(err, KeyboardInterrupt)
        try:
            tracker.end_run(status="KILLED" if stopped else "FAILED", wait_s=5 if stopped else None)
        except Exception as end_err:  # never hides why the run ended
            logger.warning("could not close the MLflow run: %r", end_err)
        raise
    finally:
        for actor in actors() if callable(actors) else actors:
            ray.kill(actor)
        if owns_ray:
            ray.shutdown()

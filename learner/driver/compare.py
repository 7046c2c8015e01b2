"""art-compare (`make compare`): the paper's comparison in one command.

Trains ART (`method=art`) and the LoRA baseline (`method=lora`) with the same task, seed,
steps and rollout budget (every override given applies to both), then evaluates, on the same
split with the same greedy settings, the text-only model (`none`), the seed image (`seed`),
ART's `art.png` and LoRA's `adapter/`. Writes `compare.json`, `compare.md` (the table) and
`compare.png` (reward curves of both methods, accuracy bars of the four conditions), all under
one MLflow parent run whose children are the two training runs and the evaluation.

    art-compare task=gsm8k task.options.data_dir=... steps=200

With `objectives=[dapo,grpo,sft]` it compares objectives instead (docs/objectives.md): one run
per objective (`algo=<name>`, or `algo.loss=<name>` for a loss without a preset), the same
method, task, seed, steps and prompts per step, evaluated and reported the same way (the table
adds each run's loss, first 5 -> last 5 steps; objectives that sample no reward, sft, have no
reward curve). `<name>:key=value` overrides one run only.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from omegaconf import DictConfig

from learner.driver.card import strict_json
from learner.driver.cli import (
    CONF_DIR,
    check_flags,
    compose_config,
    describe_override_error,
    fail,
    run_hydra_app,
)
from learner.driver.observer import Tracker, parent_run
from learner.driver.plots import comparison_figure
from learner.driver.tracking import run_params
from shared.atomic import write_bytes_atomic
from shared.config import validate
from shared.errors import UserError
from shared.tasks.scoring import open_task

logger = logging.getLogger("art.compare")
METHODS = ("art", "lora")


# Overrides for one method only (`art:...`, `lora:...` on the command line).
PER_METHOD: dict[str, list[str]] = {m: [] for m in METHODS}


# The objectives compared instead of the methods (`objectives=[...]` on the command line).
OBJECTIVES: list[str] = []


def split_objectives(argv: list[str]) -> tuple[list[str], list[str]]:
    """`objectives=[dapo,grpo,sft]` taken out of the command line: (the rest, the names)."""

    rest, names = [], []
    for arg in argv:
        if arg.startswith("objectives="):
            names = [n.strip() for n in arg.split("=", 1)[1].strip("[]").split(",") if n.strip()]
            if len(names) < 2 or len(set(names)) != len(names):
                raise UserError(
                    f"{arg}: give two or more different objectives, e.g. objectives=[dapo,grpo,sft]"
                )
        else:
            rest.append(arg)
    if names and any(a.startswith(("algo=", "algo.loss=")) for a in rest):
        raise UserError("objectives=[...] sets each run's algo: drop algo= / algo.loss=")
    return rest, names


def split_method_overrides(
    argv: list[str], names: tuple[str, ...] | list[str] = METHODS
) -> tuple[list[str], dict[str, list[str]]]:
    """`lora:learner.lr=1e-3` applies to LoRA only; a plain `learner.lr=` is refused: the two
    methods need learning rates 25x apart (ART 0.05 on pixel logits, LoRA 2e-3). Comparing
    objectives (`names` the objectives) a plain `learner.lr=` applies to all."""

    common, per = [], {m: [] for m in names}
    for arg in argv:
        method, sep, rest = arg.partition(":")
        if sep and method in names and "=" in rest:
            per[method].append(rest)
        elif arg.startswith("learner.lr=") and tuple(names) == METHODS:
            raise UserError(
                f"{arg}: art-compare trains two methods whose learning rates differ (ART 0.05, "
                "LoRA 2e-3, conf/method/); give art:learner.lr=... and/or lora:learner.lr=..."
            )
        else:
            common.append(arg)
    return common, per


def objective_override(name: str) -> str:
    """`algo=<name>` where conf/algo has the preset, else `algo.loss=<name>` (a user's loss)."""

    return (
        f"algo={name}"
        if (Path(CONF_DIR) / "algo" / f"{name}.yaml").is_file()
        else (f"algo.loss={name}")
    )


def compare(
    overrides: list[str],
    run_dir: Path,
    per_method: dict | None = None,
    objectives: list[str] | None = None,
) -> dict:
    """Train both methods (or each of `objectives`) with `overrides` (and each with its
    `per_method` ones), evaluate none, seed and every trained artifact, write the report."""
    # start-up time: loaded when this runs, not at import
    from learner.driver.evaluate import evaluate

    # start-up time: loaded when this runs, not at import
    from learner.driver.train import train

    run_dir = Path(run_dir)
    base = compose_config(*overrides, run_dir=str(run_dir))
    validate(base)  # the config, the task, its data and reward functions: before any output
    open_task(base.task, base.task.split)[2].close()
    runs = {name: objective_override(name) for name in objectives or ()}
    if not runs:
        runs = {method: f"method={method}" for method in METHODS}
    mlflow = Tracker(base, run_dir, f"compare-{run_dir.name}", params=run_params(base))
    try:
        summaries = {}
        for name, selector in runs.items():
            logger.info("training %s", name)
            extra = (per_method or {}).get(name, [])
            cfg = compose_config(*overrides, selector, *extra, run_dir=str(run_dir / name))
            with parent_run(mlflow):  # the trainings and the evaluation are its children
                summaries[name] = train(cfg)
        conditions = ["none", "seed", *(summaries[name]["artifact_path"] for name in runs)]
        quoted = ",".join(hydra_quote(c) for c in conditions)
        eval_cfg = compose_config(
            *overrides, f"eval.conditions=[{quoted}]", run_dir=str(run_dir / "eval")
        )
        with parent_run(mlflow):
            results = evaluate(eval_cfg)
        report = build_report(base, summaries, results, conditions, bool(objectives))
        write_bytes_atomic(run_dir / "compare.json", strict_json(report))  # NaN as null
        write_bytes_atomic(run_dir / "compare.md", format_markdown(report).encode())
        accuracy = {name: report["conditions"][name]["accuracy"] for name in report["conditions"]}
        rewards = {  # objectives that sample no reward (sft) have no reward curve
            name: summaries[name]["rewards"]
            for name in runs
            if any(r == r for r in summaries[name]["rewards"])
        }
        title = f"ART vs LoRA on {base.task.name}, {base.model.name}, {base.steps} steps"
        if objectives:
            title = (
                f"{', '.join(runs)} ({base.method.name}) on {base.task.name}, "
                f"{base.model.name}, {base.steps} steps"
            )
        write_bytes_atomic(run_dir / "compare.png", comparison_figure(rewards, accuracy, title))
        for name in ("compare.json", "compare.md", "compare.png"):
            mlflow.log_artifact(str(run_dir / name))
        mlflow.log_metrics({f"{n}/accuracy": a for n, a in accuracy.items()})
        mlflow.end_run()
    except BaseException as err:
        stopped = isinstance(err, KeyboardInterrupt)
        mlflow.end_run(status="KILLED" if stopped else "FAILED", wait_s=5 if stopped else None)
        raise
    print(format_markdown(report))
    return report


def hydra_quote(value: str) -> str:
    """A list element of a Hydra override, quoted so any path survives the grammar."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def build_report(
    cfg, summaries: dict, results: dict, conditions: list[str], objectives: bool = False
) -> dict:
    """The report: every condition's held-out figures and each trained run's (`methods`, or
    with objectives compared `objectives`, which adds each run's loss first 5 -> last 5)."""
    names = {"none": "none", "seed": "seed"}
    names.update(dict(zip(conditions[2:], summaries, strict=True)))
    rows = "objectives" if objectives else "methods"
    report = {
        "task": cfg.task.name,
        "model": cfg.model.name,
        "steps": cfg.steps,
        "seed": cfg.seed,
        "rollouts_per_step": f"{cfg.algo.prompts_per_step} prompts x {cfg.algo.group_size}",
        "split": cfg.eval.split,
        "conditions": {},
        rows: {},
    }
    if objectives:
        report["method"] = cfg.method.name
    for condition, metrics in results.items():
        report["conditions"][names[condition]] = {
            k: metrics[k] for k in ("accuracy", "format_rate", "mean_completion_tokens", "n")
        }
    for method in summaries:
        s, ev = summaries[method], report["conditions"][method]
        report[rows][method] = {
            "accuracy": ev["accuracy"],
            "format_rate": ev["format_rate"],
            "mean_completion_tokens": ev["mean_completion_tokens"],
            "reward_first5": s["reward_first5"],
            "reward_last5": s["reward_last5"],
            "train_wall_time_s": s["wall_time_s"],
            "sync_bytes_per_step": s["sync_bytes_mean"],
            "trainable_parameters": s["trainable_parameters"],
            "artifact_bytes": s["artifact_bytes"],
            "artifact_path": s["artifact_path"],
            "mlflow_run_id": s["mlflow_run_id"],
        }
        if objectives:
            report[rows][method].update(
                loss=s["loss"], loss_first5=s["loss_first5"], loss_last5=s["loss_last5"]
            )
    return report


def format_markdown(report: dict) -> str:
    objectives = "objectives" in report
    what = f"Objectives ({report['method']})" if objectives else "ART vs LoRA"  # the runs compared
    lines = [
        f"# {what}: {report['task']}, {report['model']}, {report['steps']} steps, "
        f"{report['rollouts_per_step']} rollouts per step, seed {report['seed']}",
        "",
        f"Held-out accuracy ({report['split']} split, greedy):",
        "",
        "| condition | accuracy | format rate | mean completion tokens | n |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, m in report["conditions"].items():
        lines.append(
            f"| {name} | {m['accuracy']:.3f} | {m['format_rate']:.3f} | "
            f"{m['mean_completion_tokens']:.1f} | {m['n']} |"
        )
    if not objectives:
        lines += [
            "",
            "| method | accuracy | reward first 5 -> last 5 | train wall s | sync bytes per step | "
            "trainable parameters | artifact bytes on disk |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for name, m in report["methods"].items():
            lines.append(
                f"| {name} | {m['accuracy']:.3f} | {m['reward_first5']:.3f} -> "
                f"{m['reward_last5']:.3f} | {m['train_wall_time_s']:.1f} | "
                f"{m['sync_bytes_per_step']:,.0f} | {m['trainable_parameters']:,} | "
                f"{m['artifact_bytes']:,} |"
            )
        return "\n".join(lines) + "\n"
    lines += [
        "",
        "| objective | accuracy | reward first 5 -> last 5 | loss first 5 -> last 5 | train "
        "wall s | sync bytes per step | trainable parameters | artifact bytes on disk |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, m in report["objectives"].items():
        reward = (
            f"{m['reward_first5']:.3f} -> {m['reward_last5']:.3f}"
            if m["reward_first5"] == m["reward_first5"]  # not NaN
            else "none sampled"
        )
        lines.append(
            f"| {name} | {m['accuracy']:.3f} | {reward} | {m['loss_first5']:.4f} -> "
            f"{m['loss_last5']:.4f} | {m['train_wall_time_s']:.1f} | "
            f"{m['sync_bytes_per_step']:,.0f} | {m['trainable_parameters']:,} | "
            f"{m['artifact_bytes']:,} |"
        )
    return "\n".join(lines) + "\n"


def compare_app(cfg: DictConfig) -> None:
    # start-up time: a heavy library, loaded when this runs
    from hydra.core.hydra_config import HydraConfig

    task_overrides = HydraConfig.get().overrides.task
    if OBJECTIVES:  # every run the same method (the one given, if any)
        compare(list(task_overrides), Path(cfg.run_dir), PER_METHOD, OBJECTIVES)
        return
    overrides = [o for o in task_overrides if not o.startswith("method=")]
    compare(overrides, Path(cfg.run_dir), PER_METHOD)


def main() -> None:
    from learner.driver.algorithms import check_config  # start-up time: after the flags

    check_flags(sys.argv[1:], "art-compare")
    try:
        argv, objectives = split_objectives(sys.argv[1:])
        sys.argv[1:], per = split_method_overrides(argv, objectives or METHODS)
        common = [a for a in sys.argv[1:] if "=" in a and not a.startswith("-")]
        for method, extra in per.items():  # every arm checked as its run's own config, first
            selector = objective_override(method) if objectives else f"method={method}"
            check_config(compose_config(*common, selector, *extra))
    except UserError as err:
        fail("art-compare", str(err))
    except Exception as err:  # a composition error: one line naming the override
        fail("art-compare", describe_override_error(err))
    PER_METHOD.clear()
    PER_METHOD.update(per)
    OBJECTIVES[:] = objectives
    run_hydra_app(compare_app, "art-compare")


if __name__ == "__main__":
    main()

"""art-compare (`make compare`): the paper's comparison in one command.

Trains ART (`method=art`) and the LoRA baseline (`method=lora`) with the same task, seed,
steps and rollout budget (every override given applies to both), then evaluates, on the same
split with the same greedy settings, the text-only model (`none`), the seed image (`seed`),
ART's `art.png` and LoRA's `adapter/`. Writes `compare.json`, `compare.md` (the table) and
`compare.png` (reward curves of both methods, accuracy bars of the four conditions), all under
one MLflow parent run whose children are the two training runs and the evaluation.

    art-compare task=gsm8k task.options.data_dir=... steps=200
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from omegaconf import DictConfig

from learner.driver.cli import compose_config, run_hydra_app
from learner.driver.observer import Tracker, parent_run
from learner.driver.plots import comparison_figure
from learner.driver.tracking import run_params
from shared.atomic import write_bytes_atomic

logger = logging.getLogger("art.compare")
METHODS = ("art", "lora")


# Overrides for one method only (`art:...`, `lora:...` on the command line).
PER_METHOD: dict[str, list[str]] = {m: [] for m in METHODS}


def split_method_overrides(argv: list[str]) -> tuple[list[str], dict[str, list[str]]]:
    """`lora:learner.lr=1e-3` applies to LoRA only; a plain `learner.lr=` is refused: the two
    methods need learning rates 25x apart (ART 0.05 on pixel logits, LoRA 2e-3)."""
    from shared.errors import UserError

    common, per = [], {m: [] for m in METHODS}
    for arg in argv:
        method, sep, rest = arg.partition(":")
        if sep and method in METHODS and "=" in rest:
            per[method].append(rest)
        elif arg.startswith("learner.lr="):
            raise UserError(
                f"{arg}: art-compare trains two methods whose learning rates differ (ART 0.05, "
                "LoRA 2e-3, conf/method/); give art:learner.lr=... and/or lora:learner.lr=..."
            )
        else:
            common.append(arg)
    return common, per


def compare(overrides: list[str], run_dir: Path, per_method: dict | None = None) -> dict:
    """Train both methods with `overrides` (and each with its `per_method` ones), evaluate the
    four conditions, write the report."""
    from learner.driver.evaluate import evaluate
    from learner.driver.train import train
    from shared.config import validate
    from shared.tasks.scoring import open_task

    run_dir = Path(run_dir)
    base = compose_config(*overrides, run_dir=str(run_dir))
    validate(base)  # the config, the task, its data and reward functions: before any output
    open_task(base.task, base.task.split)[2].close()
    mlflow = Tracker(base, run_dir, f"compare-{run_dir.name}", params=run_params(base))
    try:
        summaries = {}
        for method in METHODS:
            logger.info("training %s", method)
            extra = (per_method or {}).get(method, [])
            cfg = compose_config(
                *overrides, f"method={method}", *extra, run_dir=str(run_dir / method)
            )
            with parent_run(mlflow):  # the trainings and the evaluation are its children
                summaries[method] = train(cfg)
        conditions = [
            "none",
            "seed",
            summaries["art"]["artifact_path"],
            summaries["lora"]["artifact_path"],
        ]
        quoted = ",".join(hydra_quote(c) for c in conditions)
        eval_cfg = compose_config(
            *overrides, f"eval.conditions=[{quoted}]", run_dir=str(run_dir / "eval")
        )
        with parent_run(mlflow):
            results = evaluate(eval_cfg)
        report = build_report(base, summaries, results, conditions)
        write_bytes_atomic(run_dir / "compare.json", json.dumps(report, indent=2).encode())
        write_bytes_atomic(run_dir / "compare.md", format_markdown(report).encode())
        accuracy = {name: report["conditions"][name]["accuracy"] for name in report["conditions"]}
        rewards = {m: summaries[m]["rewards"] for m in METHODS}
        title = f"ART vs LoRA on {base.task.name}, {base.model.name}, {base.steps} steps"
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


def build_report(cfg, summaries: dict, results: dict, conditions: list[str]) -> dict:
    names = {"none": "none", "seed": "seed", conditions[2]: "art", conditions[3]: "lora"}
    report = {
        "task": cfg.task.name,
        "model": cfg.model.name,
        "steps": cfg.steps,
        "seed": cfg.seed,
        "rollouts_per_step": f"{cfg.algo.prompts_per_step} prompts x {cfg.algo.group_size}",
        "split": cfg.eval.split,
        "conditions": {},
        "methods": {},
    }
    for condition, metrics in results.items():
        report["conditions"][names[condition]] = {
            k: metrics[k] for k in ("accuracy", "format_rate", "mean_completion_tokens", "n")
        }
    for method in METHODS:
        s, ev = summaries[method], report["conditions"][method]
        report["methods"][method] = {
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
    return report


def format_markdown(report: dict) -> str:
    lines = [
        f"# ART vs LoRA: {report['task']}, {report['model']}, {report['steps']} steps, "
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
    lines += [
        "",
        "| method | accuracy | reward first 5 -> last 5 | train wall s | sync bytes per step | "
        "trainable parameters | artifact bytes on disk |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, m in report["methods"].items():
        lines.append(
            f"| {name} | {m['accuracy']:.3f} | {m['reward_first5']:.3f} -> {m['reward_last5']:.3f} "
            f"| {m['train_wall_time_s']:.1f} | {m['sync_bytes_per_step']:,.0f} | "
            f"{m['trainable_parameters']:,} | {m['artifact_bytes']:,} |"
        )
    return "\n".join(lines) + "\n"


def compare_app(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    overrides = [o for o in HydraConfig.get().overrides.task if not o.startswith("method=")]
    compare(overrides, Path(cfg.run_dir), PER_METHOD)


def main() -> None:
    import sys

    from learner.driver.cli import fail
    from shared.errors import UserError

    try:
        sys.argv[1:], per = split_method_overrides(sys.argv[1:])
        for method, extra in per.items():  # each checked as the method's own config
            if extra:
                compose_config(f"method={method}", *extra)
    except UserError as err:
        fail("art-compare", str(err))
    except Exception as err:
        from learner.driver.cli import describe_override_error

        fail("art-compare", describe_override_error(err))
    PER_METHOD.update(per)
    run_hydra_app(compare_app, "art-compare")


if __name__ == "__main__":
    main()

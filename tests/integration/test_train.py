"""The embedded default, end to end through `train()`: it must learn."""

import json
from pathlib import Path

import pytest

from learner.driver import train as driver
from shared.artifact import decode_png


@pytest.mark.slow
def test_embedded_default_learns(trained_run):
    cfg, summary = trained_run
    run = Path(cfg.run_dir)
    tmp_path = run.parent
    on_disk = json.loads((run / "summary.json").read_text())
    assert on_disk == summary
    for key in (
        "steps",
        "reward_first5",
        "reward_last5",
        "wall_time_s",
        "image_path",
        "mlflow_run_id",
    ):
        assert key in summary
    print(
        f"\nreward_first5={summary['reward_first5']:.3f} reward_last5={summary['reward_last5']:.3f}"
    )
    assert summary["reward_last5"] - summary["reward_first5"] >= 0.3
    pixels, meta = decode_png((run / "art.png").read_bytes())
    assert pixels.shape == (64, 64, 3) and meta["step"] == str(summary["image_version"])
    assert (run / "checkpoints" / "last.pt").exists()
    assert len(list((run / "images").glob("step_*.png"))) >= 1
    assert (run / "best.png").exists() and summary["best_eval_accuracy"] is not None
    assert (run / "curves.png").exists() and (run / "images/evolution.png").exists()

    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    history = mlflow.MlflowClient().get_metric_history(summary["mlflow_run_id"], "reward_mean")
    assert len(history) == summary["steps"]
    logged = mlflow.get_run(summary["mlflow_run_id"]).data.metrics
    for name in (
        "reward_std",
        "accuracy",
        "loss",
        "clip_frac_low",
        "clip_frac_high",
        "logprob_mean",
        "mismatch_abs_mean",
        "mismatch_kl",
        "kept_group_frac",
        "generation_rounds",
        "completion_len_mean",
        "completion_len_max",
        "png_bytes",
        "pixel_distance",
        "time_rollout_s",
        "time_update_s",
        "time_broadcast_s",
    ):
        assert name in logged, name


@pytest.mark.slow
def test_resume_is_exact(ray_local, tmp_path, make_cfg):
    """4 steps in one go == 2 steps, stop, resume to 4: same art.png bytes, same rewards."""
    common = ("logging.checkpoint_every=2", "eval.every=2", "eval.val_size=8", "algo.group_size=4")
    whole = make_cfg("steps=4", *common)
    whole.run_dir = str(tmp_path / "whole")
    uninterrupted = driver.train(whole)

    half = make_cfg("steps=2", *common)
    half.run_dir = str(tmp_path / "half")
    first = driver.train(half)
    assert len(first["rewards"]) == 2
    resumed_cfg = make_cfg(
        "steps=4", f"resume_from={tmp_path / 'half/checkpoints/last.pt'}", *common
    )
    resumed_cfg.run_dir = str(tmp_path / "ignored")  # a resumed run continues in its own folder
    resumed = driver.train(resumed_cfg)

    assert not (tmp_path / "ignored").exists()
    assert resumed["rewards"] == uninterrupted["rewards"] and len(resumed["rewards"]) == 4
    assert (tmp_path / "half/art.png").read_bytes() == (tmp_path / "whole/art.png").read_bytes()
    assert resumed["image_version"] == uninterrupted["image_version"]
    assert sorted(p.name for p in (tmp_path / "half/images").glob("step_*.png")) == [
        "step_000002.png",
        "step_000004.png",
    ]
    assert resumed["mlflow_run_id"] == first["mlflow_run_id"]  # the same MLflow run goes on
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    history = mlflow.MlflowClient().get_metric_history(resumed["mlflow_run_id"], "reward_mean")
    assert [m.step for m in history] == [1, 2, 3, 4]


def test_checkpoints_load_as_plain_data_and_refuse_another_run(ray_local, tmp_path, make_cfg):
    import torch

    from learner.driver.checkpoint import CheckpointError, load_checkpoint

    cfg = make_cfg("steps=1", "eval.every=0", "algo.group_size=4")
    driver.train(cfg)
    path = tmp_path / "run/checkpoints/last.pt"
    state = torch.load(path, weights_only=True)  # tensors and plain values only
    assert state["driver"]["step"] == 1 and state["learner"]["model"] == "tiny"
    with pytest.raises(CheckpointError, match="trained for model 'tiny', not 'other'"):
        load_checkpoint(path, "other", 64, 64)
    with pytest.raises(CheckpointError, match="its image is 64x64, the config asks for 96x96"):
        load_checkpoint(path, "tiny", 96, 96)
    with pytest.raises(CheckpointError, match="method 'art', this run is 'lora'"):
        load_checkpoint(path, "tiny", 64, 64, method="lora")


def test_gsm8k_pipeline_takes_real_data(ray_local, tmp_path, fixtures_dir, make_cfg, monkeypatch):
    """A random tiny model scores ~0 on GSM8K; the point is that real rows flow end to end:
    the task's own reward sees training rows of the fixture file, the completions the workers
    sampled for their prompts, and each step's reward is the mean of what it returned."""
    import shared.tasks

    calls = []
    load = shared.tasks.load_task

    def spying_load_task(name, **options):
        task = load(name, **options)
        reward = task.reward

        def spy(example, text):
            calls.append((example.question, text, reward(example, text)))
            return calls[-1][2]

        task.reward = spy
        return task

    monkeypatch.setattr(shared.tasks, "load_task", spying_load_task)
    cfg = make_cfg(
        "task=gsm8k",
        f"task.options.data_dir={fixtures_dir / 'gsm8k'}",
        "steps=2",
        "algo.group_size=2",
        "algo.prompts_per_step=2",
        "algo.max_extra_rounds=0",
        "rollout.max_new_tokens=8",
        "eval.every=0",
    )
    summary = driver.train(cfg)
    assert summary["task"] == "gsm8k" and len(summary["rewards"]) == 2
    gsm8k = load("gsm8k", data_dir=fixtures_dir / "gsm8k")
    train = {ex.question for ex in gsm8k.examples("train")}
    assert not train & {ex.question for ex in gsm8k.examples("test")}
    assert len(calls) == 2 * 2 * 2 and {q for q, _, _ in calls} <= train
    per_step = [[r for _, _, r in calls[i : i + 4]] for i in (0, 4)]
    assert summary["rewards"] == pytest.approx([sum(r) / 4 for r in per_step])
    assert (tmp_path / "run" / "art.png").exists()


@pytest.mark.slow
def test_a_run_that_cannot_learn_stops_with_one_line(tmp_path):
    """Every group all wrong (a reward that never rewards): a warning at the first step that
    says why, then `stopped:` and status 1 after algo.max_uninformative_steps in a row."""
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    cmd = [
        str(Path(sys.executable).parent / "art-train"),
        f"task.rewards=[{repo}/tests/fixtures/extensions/zero_reward.py:zero]",
        "algo.max_uninformative_steps=3", "steps=20", "eval.every=0", f"output_dir={tmp_path}",
        f"logging.tracking_uri=sqlite:///{tmp_path}/mlflow.db", "run_name=flat",
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    stopped = [ln for ln in done.stderr.splitlines() if ln.startswith("art-train: stopped:")]
    print(stopped)
    assert done.returncode == 1 and len(stopped) == 1, done.stderr[-3000:]
    assert "no informative group in 3 steps in a row" in stopped[0]
    assert "algo.filter_metric=reward" in stopped[0] and "Resume with" in stopped[0]
    assert "step 1: no informative group: every group's strict accuracies" in done.stderr
    assert "Traceback" not in done.stderr

"""A task written outside the repository (a JSONL file and a reward module in a temporary
folder): a Ray job submitted with art-submit (the folder moved away while the job runs) and
art-compare; and a reasoning-gym task two steps offline. The rewards a run reports are checked
against what the user's functions returned (they write every call to a log). art-train and
art-eval on such a task: tests/integration/test_readme_example.py."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from learner.bench import local_cluster
from learner.driver.tracking import mean

BIN = Path(sys.executable).parent
QUESTIONS = [
    "Which letter does the picture show?",
    "Read the picture and answer with one letter.",
    "What is the code of this image?",
    "Look at the image. Letter?",
]
REWARDS = '''
import json, os
from pathlib import Path

LOG = os.environ.get("ART_TEST_REWARD_LOG") or str(Path(__file__).with_name("calls.jsonl"))


def _log(**record):
    with open(LOG, "a") as f:
        f.write(json.dumps({**record, "file": __file__, "pid": os.getpid()}) + "\\n")


def letter(completions, answer, trainer_state, **kwargs):
    """TRL's shape: 1 for the answer, 0.1 for another single letter."""
    said = [c.strip().rstrip(".") for c in completions]
    values = [1.0 if s == a else 0.1 if len(s) == 1 else 0.0 for s, a in zip(said, answer)]
    _log(fn="letter", step=trainer_state.global_step, values=values, ids=kwargs["id"])
    return values


def short(data_source, solution_str, ground_truth, extra_info=None):
    """verl's shape: 1 for an answer of at most two characters; logs its length."""
    value = 1.0 if len(solution_str.strip()) <= 2 else 0.0
    _log(fn="short", value=value, id=extra_info["id"], source=data_source)
    return {"score": value, "chars": len(solution_str)}
'''


def make_task_folder(root: Path) -> Path:
    folder = root / "letters"
    folder.mkdir(parents=True)
    rows = [{"id": f"q{i}", "question": q, "answer": "F"} for i, q in enumerate(QUESTIONS * 5)]
    (folder / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "rewards.py").write_text(REWARDS)
    return folder


def task_overrides(folder: Path) -> list[str]:
    return [
        "task=custom",
        f"task.options.data_files={folder}/rows.jsonl",
        "task.options.id_field=id",
        "task.options.max_new_tokens=4",
        f"task.rewards=[{folder}/rewards.py:letter,{folder}/rewards.py:short]",
        "task.reward_weights=[1.0,0.5]",
    ]


SMALL = [
    "steps=3",
    "algo.group_size=4",
    "algo.prompts_per_step=2",
    "algo.max_extra_rounds=0",
    "eval.every=0",
]


def read_log(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def check_rewards_are_the_functions(run: Path, log: list[dict]) -> dict:
    """Per step: the run's `rewards/letter/mean` is the mean of what `letter` returned in that
    step, and its reward is letter + 0.5 x short (the weights); returns summary.json."""
    import torch

    summary = json.loads((run / "summary.json").read_text())
    history = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["driver"]["history"]
    for step in range(summary["steps"]):
        values = [v for r in log if r["fn"] == "letter" and r["step"] == step for v in r["values"]]
        assert len(values) == 2 * 4, values  # one round: 2 prompts x 4 completions
        assert history["rewards/letter/mean"][step] == pytest.approx(mean(values))
        combined = history["rewards/letter/mean"][step] + 0.5 * history["rewards/short/mean"][step]
        assert summary["rewards"][step] == pytest.approx(combined)
    assert set(summary["reward_functions"]) == {"letter", "short"}
    assert summary["reward_functions"]["letter"]["failures"] == 0
    assert {r["source"] for r in log if r["fn"] == "short"} == {"custom"}
    return summary


def run(command: list[str], cwd: Path, env: dict | None = None, timeout: int = 900):
    done = subprocess.run(
        command, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env
    )
    print(done.stdout[-2000:], done.stderr[-3000:])
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.mark.slow
def test_a_task_from_a_temp_folder_trains_as_a_ray_job_with_its_folder_gone(tmp_path):
    folder = make_task_folder(tmp_path / "elsewhere")
    log, outputs = tmp_path / "job-calls.jsonl", tmp_path / "outputs"
    with local_cluster.two_node_cluster({}, {}, num_cpus=4, start_worker=False) as cluster:
        submitted = run(
            [
                str(BIN / "art-submit"), "--address", cluster["dashboard"],
                "--python", sys.executable, "--env", f"ART_TEST_REWARD_LOG={log}", "--",
                "cluster=existing", *task_overrides(folder), *SMALL,
                "rollout.num_cpus_per_worker=0.5", "learner.num_cpus=0.5",
                f"output_dir={outputs}", f"logging.tracking_uri=sqlite:///{tmp_path}/mlflow.db",
                f"logging.artifact_location={tmp_path}/artifacts",
            ],
            cwd=tmp_path, env=cluster["env"],
        )  # fmt: skip
        assert f"shipping:      {folder} (task files" in submitted.stdout
        job = next(ln.split()[-1] for ln in submitted.stdout.splitlines() if "submitted job:" in ln)
        shutil.move(folder, tmp_path / "moved")  # the job can only use what was shipped
        from ray.job_submission import JobSubmissionClient

        client, deadline = JobSubmissionClient(cluster["dashboard"]), time.monotonic() + 900
        while str(client.get_job_status(job)).split(".")[-1] not in ("SUCCEEDED", "FAILED"):
            assert time.monotonic() < deadline
            time.sleep(2)
        logs = client.get_job_logs(job)
        print(logs[-3000:])
        assert str(client.get_job_status(job)).endswith("SUCCEEDED")
    assert "task.options.data_files=letters/rows.jsonl" in logs  # the rewritten paths
    assert "py_modules_files" in logs.split("task=custom: 20 examples from ", 1)[1].split()[0]
    records = read_log(log)
    assert all("py_modules_files" in r["file"] for r in records)  # the shipped copy ran
    (run_dir,) = [p.parent for p in outputs.glob("*/summary.json")]
    check_rewards_are_the_functions(run_dir, records)


@pytest.mark.slow
def test_art_compare_takes_a_custom_task(ray_local, tmp_path):
    from learner.driver.compare import compare

    folder = make_task_folder(tmp_path / "elsewhere")
    overrides = [
        *task_overrides(folder),
        "steps=1",
        "algo.group_size=4",
        "algo.prompts_per_step=2",
        "eval.every=0",
        f"logging.tracking_uri=sqlite:///{tmp_path}/mlflow.db",
        f"logging.artifact_location={tmp_path}/artifacts",
    ]
    report = compare(overrides, tmp_path / "cmp")
    assert report["task"] == "custom"
    assert set(report["conditions"]) == {"none", "seed", "art", "lora"}
    assert all(c["n"] == 2 for c in report["conditions"].values())
    calls = read_log(folder / "calls.jsonl")
    assert {r["step"] for r in calls if r["fn"] == "letter"} == {0}  # both methods' one step
    for method in ("art", "lora"):
        (run_dir,) = [p.parent for p in (tmp_path / "cmp" / method).glob("**/summary.json")]
        summary = json.loads((run_dir / "summary.json").read_text())
        assert set(summary["reward_functions"]) == {"letter", "short"}


@pytest.mark.slow
def test_a_reasoning_gym_task_trains_two_steps_offline(tmp_path):
    pytest.importorskip("reasoning_gym")
    offline = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    outputs = tmp_path / "outputs"
    run(
        [
            str(BIN / "art-train"), "task=reasoning_gym", "task.options.dataset=leg_counting",
            "task.options.size=16", "task.options.test_size=4", "steps=2",
            "algo.group_size=2", "algo.prompts_per_step=2", "algo.filter_metric=none",
            "rollout.max_new_tokens=8", "eval.every=0", f"output_dir={outputs}",
            f"logging.tracking_uri=sqlite:///{tmp_path}/mlflow.db",
            f"logging.artifact_location={tmp_path}/artifacts",
        ],
        cwd=tmp_path, env=offline,
    )  # fmt: skip
    (summary_path,) = outputs.glob("*/summary.json")
    summary = json.loads(summary_path.read_text())
    assert summary["task"] == "reasoning_gym" and summary["steps"] == 2
    assert summary["image_version"] == 2  # both steps went through the learner
    assert list(summary["reward_functions"]) == ["reasoning_gym"]
    config = (summary_path.parent / "config.yaml").read_text()
    assert "<answer>" in config  # reasoning-gym's own system prompt went into the prompts

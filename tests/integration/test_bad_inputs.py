"""Bad inputs through the real entry points: each ends in one short line that names the input
and says what to do, exit status 2, no traceback, and nothing written.

Run with `-s` to see the table of first lines (it goes into the reliability notes)."""

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

BIN = Path(sys.executable).parent
GOOD_ROW = {"question": "Tom has 3 apples and buys 4. How many?", "answer": "3 + 4 = 7\n#### 7"}


def _jsonl(path: Path, rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def _png(path: Path, mode="RGB", size=(64, 64)) -> Path:
    Image.new(mode, size).save(path)
    return path


def _other_model_checkpoint(tmp: Path) -> Path:
    import torch

    from learner.driver.checkpoint import DriverState, save_checkpoint

    state = {"method": "art", "model": "qwen3_5_0_8b_random", "height": 64, "width": 64}
    state["theta_CHW"] = torch.zeros(3, 64, 64)
    return save_checkpoint(tmp / "old/checkpoints/last.pt", state, DriverState(step=3))


def _other_model_png(tmp: Path) -> Path:
    from shared.artifact import art_metadata, encode_png

    path = tmp / "other.png"
    pixels = np.zeros((64, 64, 3), np.uint8)
    path.write_bytes(encode_png(pixels, art_metadata("Qwen/Qwen3.5-0.8B", 64, 64, 10)))
    return path


def _toolmind_bad_arguments(tmp: Path) -> Path:
    row = {
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
        "conversations": [
            {"role": "user", "content": "call f"},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [{"function": {"name": "f", "arguments": "{not json"}}],
            },
        ],
    }
    return _jsonl(tmp / "toolmind.jsonl", [row])


def _gsm8k(tmp: Path, rows) -> str:
    _jsonl(tmp / "gsm8k/train.jsonl", rows)
    return f"task.options.data_dir={tmp / 'gsm8k'}"


def _user_files(tmp: Path) -> Path:
    """A task folder of the user's: rows, a reward module with good and bad functions."""
    folder = tmp / "mine"
    _jsonl(folder / "rows.jsonl", [{"question": "Letter?", "answer": "F", "topic": "t"}] * 4)
    (folder / "rewards.py").write_text(
        "def letter(completions, answer, **kwargs):\n    return [1.0] * len(completions)\n"
        "def two(x, y):\n    return 1.0\n"
        "def needs(completions, solution):\n    return [1.0] * len(completions)\n"
    )
    (folder / "broken.py").write_text("import numpyy\n")
    (folder / "task.py").write_text(
        "from shared.tasks.base import Task\n"
        "class Mine(Task):\n"
        "    def __init__(self, n: int = 1):\n        self.n = n\n"
        "    def examples(self, split, limit=None):\n        return []\n"
        "    def score(self, example, completion):\n        return 0.0\n"
    )
    return folder


def _custom(tmp: Path, *extra: str) -> list[str]:
    folder = _user_files(tmp)
    return ["task=custom", f"task.options.data_files={folder}/rows.jsonl", *extra]


def _rewards(tmp: Path, name: str, *extra: str) -> list[str]:
    folder = _user_files(tmp)
    return _custom(tmp, f"task.rewards=[{folder}/{name}]", *extra)


@dataclass(frozen=True)
class Case:
    """One bad input: the program, its arguments (made in the test's tmp folder), what its one
    error line must say, and extra environment variables."""

    name: str
    prog: str
    args: Callable[[Path], list[str]]
    expected: str
    env: dict = field(default_factory=dict)


# fmt: off
CASES = [
    Case("missing seed image", "art-train", lambda t: [f"image.init={t}/nope.png"], "does not exist"),
    Case("corrupt seed image", "art-train", lambda t: [f"image.init={_write(t / 'x.png', b'garbage')}"], "cannot be read as an image"),
    Case("truncated seed PNG", "art-train", lambda t: [f"image.init={_truncated_png(t)}"], "cannot be read as an image"),
    Case("CMYK seed image", "art-train", lambda t: [f"image.init={_png(t / 'cmyk.jpg', 'CMYK')}"], "colour mode CMYK"),
    Case("seed image background", "art-train", lambda t: ["image.background=pink"], "image.background='pink'"),
    Case("image size the processor would resize", "art-train", lambda t: ["image.height=60"], "not a multiple of 32"),
    Case("PNG trained for another model to art-eval", "art-eval", lambda t: [f"eval.conditions=[{_other_model_png(t)}]"], "trained for model 'Qwen/Qwen3.5-0.8B', not 'tiny'"),
    Case("art-eval image that does not exist", "art-eval", lambda t: [f"eval.conditions=[{t}/no.png]"], "neither none, seed, an existing PNG file nor a LoRA adapter folder"),
    Case("art-eval image that is not a PNG", "art-eval", lambda t: [f"eval.conditions=[{_write(t / 'notes.png', b'hello')}]"], "cannot be read as a PNG"),
    Case("art-eval adapter folder without weights", "art-eval", lambda t: [f"eval.conditions=[{_half_adapter(t)}]"], "is not a usable LoRA adapter folder"),
    Case("unknown task", "art-train", lambda t: ["task=mmlu"], "task=mmlu: no such option; task is one of: class, custom, gpqa"),
    Case("unknown config key", "art-train", lambda t: ["algo.group_sise=4"], "unknown config key 'algo.group_sise'"),
    Case("wrong-typed override", "art-train", lambda t: ["steps=many"], "steps: Value 'many'"),
    Case("steps <= 0", "art-train", lambda t: ["steps=0"], "steps=0: set steps >= 1"),
    Case("group_size < 2", "art-train", lambda t: ["algo.group_size=1"], "algo.group_size=1"),
    Case("prompts_per_step = 0", "art-train", lambda t: ["algo.prompts_per_step=0"], "algo.prompts_per_step=0"),
    Case("eps_high < eps_low", "art-train", lambda t: ["algo.eps_high=0.1"], "clip-higher needs eps_high >= eps_low"),
    Case("temperature 0 in training", "art-train", lambda t: ["algo.temperature=0"], "algo.temperature=0.0: training samples"),
    Case("top_p < 1 in training", "art-train", lambda t: ["rollout.top_p=0.9"], "top_p=1.0 because"),
    Case("eval.limit = 0", "art-eval", lambda t: ["eval.limit=0"], "eval.limit must be >= 1"),
    Case("missing data folder", "art-train", lambda t: ["task=gsm8k", f"task.options.data_dir={t}/none"], "data folder"),
    Case("empty data file", "art-train", lambda t: ["task=gsm8k", _gsm8k(t, [])], "holds no rows"),
    Case("malformed JSON row", "art-train", lambda t: ["task=gsm8k", _gsm8k(t, [GOOD_ROW, "{not json"])], "train.jsonl row 1 (line 2): invalid JSON"),
    Case("row without an answer", "art-train", lambda t: ["task=gsm8k", _gsm8k(t, [{"question": "q"}])], "row 0: missing field 'answer'"),
    Case("non-numeric gold", "art-train", lambda t: ["task=gsm8k", _gsm8k(t, [{"question": "q", "answer": "so\n#### seven"}])], "final answer ' seven' is not a number"),
    Case("ToolMind tool arguments that are not JSON", "art-train", lambda t: ["task=toolmind", f"task.options.data_files={_toolmind_bad_arguments(t)}"], "malformed tool call"),
    Case("unwritable output_dir", "art-train", lambda t: ["output_dir=/proc/art-runs"], "cannot write the run folder"),
    Case("checkpoint of another model", "art-train", lambda t: [f"resume_from={_other_model_checkpoint(t)}"], "trained for model 'qwen3_5_0_8b_random', not 'tiny'"),
    Case("resume from a missing checkpoint", "art-train", lambda t: [f"resume_from={t}/gone/last.pt"], "does not exist"),
    Case("resume from a file that is no checkpoint", "art-train", lambda t: [f"resume_from={_write(t / 'r/checkpoints/last.pt', b'hello')}"], "not a readable ART checkpoint"),
    Case("Ray address that does not answer", "art-train", lambda t: ["cluster.address=127.0.0.1:9"], "does not answer"),
    Case("more GPUs than the cluster has", "art-train", lambda t: ["rollout.num_gpus_per_worker=1"], "asked for 2 GPU in all"),
    Case("hub model id with the hub unreachable", "art-train", lambda t: ["model=acme/no-such-model"], "the Hugging Face hub (http://127.0.0.1:9) is unreachable", env={"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_OFFLINE": "0"}),
    Case("art-eval with no conditions", "art-eval", lambda t: ["eval.conditions=[]"], "eval.conditions is empty"),
    Case("model folder without a processor", "art-train", lambda t: [f"model.name={_write(t / 'm/config.json', b'{}').parent}"], "lacks tokenizer.json / tokenizer_config.json (the tokenizer), preprocessor_config.json"),
    Case("learner on cuda without a GPU", "art-train", lambda t: ["model.device=cuda"], "asked for 1 GPU in all (learner 1)"),
    Case("one GPU mode without a GPU", "art-train", lambda t: [
            "cluster=single_gpu",
            "rollout.python=self",
            "rollout.engine=hf",
            "rollout.num_workers=1",
        ], "cluster=single_gpu needs a GPU"),
    Case("too many extra rounds", "art-train", lambda t: ["algo.max_extra_rounds=64"], "algo.max_extra_rounds=64: use 0 to 63"),
    Case("MLflow server that does not answer", "art-train", lambda t: ["logging.tracking_uri=http://127.0.0.1:9"], "the MLflow server at logging.tracking_uri=http://127.0.0.1:9 does not answer"),
    Case("unknown rollout correction", "art-train", lambda t: ["algo.rollout_correction=tis"], "use off, token or sequence"),
    Case("art-compare with one learning rate for both methods", "art-compare", lambda t: ["learner.lr=0.01"], "give art:learner.lr=... and/or lora:learner.lr=..."),
    Case("art-submit with a bad override", "art-submit", lambda t: ["--address", "http://127.0.0.1:9", "steps=0"], "steps=0: set steps >= 1"),
    Case("art-submit without a Ray cluster", "art-submit", lambda t: ["--address", "http://127.0.0.1:9", "steps=1"], "no Ray cluster answers at http://127.0.0.1:9"),
    Case("art-bench unknown section", "art-bench", lambda t: ["--skip", "z"], "sections are"),
    Case("art-scale to no workers", "art-scale", lambda t: ["--address", "http://127.0.0.1:9", "--workers", "0"], "--workers 0: set >= 1"),
    Case("art-scale without a Ray cluster", "art-scale", lambda t: ["--address", "http://127.0.0.1:9", "--workers", "2"], "no Ray cluster answers at http://127.0.0.1:9"),
    Case("learner replicas with one GPU", "art-train", lambda t: ["cluster=single_gpu", "learner.num_replicas=2", "rollout.num_workers=1"], "runs one learner: set learner.num_replicas=1"),
    Case("rollout.max_workers below num_workers", "art-train", lambda t: ["rollout.max_workers=1"], "rollout.max_workers=1 must be >= rollout.num_workers=2"),
    Case("tensor parallel on the HF engine", "art-train", lambda t: ["rollout.tensor_parallel_size=2"], "needs rollout=vllm"),
    Case("reward module that does not import", "art-train", lambda t: _rewards(t, "broken.py:f"), "task.rewards: importing"),
    Case("reward file that does not exist", "art-train", lambda t: _rewards(t, "nope.py:f"), "nope.py does not exist; check the path"),
    Case("reward function the module lacks", "art-train", lambda t: _rewards(t, "rewards.py:letters"), "has no 'letters' (it has: letter, needs, two)"),
    Case("reward with a signature of neither shape", "art-train", lambda t: _rewards(t, "rewards.py:two"), "two(x, y) fits neither reward shape: TRL's f(prompts, completions"),
    Case("reward asking for a column the data lacks", "art-train", lambda t: _rewards(t, "rewards.py:needs"), "needs 'solution', which the task does not give"),
    Case("reward weights that do not match", "art-train", lambda t: _rewards(t, "rewards.py:letter", "task.reward_weights=[1,2]"), "task.reward_weights has 2 weights for 1 task.rewards"),
    Case("custom task without data", "art-train", lambda t: ["task=custom"], "task=custom needs its data"),
    Case("custom rows without the mapped question", "art-train", lambda t: _custom(t, "task.options.question_field=problem"), "rows.jsonl row 0: missing field 'problem'"),
    Case("custom template naming a missing column", "art-train", lambda t: _custom(t, "task.options.prompt_template='{question} ({hint})'"), "row 0: task.options.prompt_template names {hint}"),
    Case("task=class without a class", "art-train", lambda t: ["task=class"], "task=class needs task.name=<module:Class or path/to/file.py:Class>"),
    Case("task options the class does not take", "art-train", lambda t: [
            "task=class",
            f"task.name={_user_files(t)}/task.py:Mine",
            "+task.options.size=3",
        ], "task.options do not fit its constructor"),
    Case("unknown reasoning-gym dataset", "art-train", lambda t: ["task=reasoning_gym", "task.options.dataset=leg_countin"], "no dataset 'leg_countin' (did you mean leg_counting"),
    Case("art-eval with a reward that does not import", "art-eval", lambda t: _rewards(t, "broken.py:f"), "task.rewards: importing"),
    Case("art-compare with a reward of neither shape", "art-compare", lambda t: _rewards(t, "rewards.py:two"), "fits neither reward shape"),
    Case("art-submit with a reward that does not import", "art-submit", lambda t: ["--address", "http://127.0.0.1:9", *_rewards(t, "broken.py:f")], "task.rewards: importing"),
]
# fmt: on
# Entry points that take no Hydra overrides of the run's outputs.
PLAIN_ARGS = ("art-submit", "art-bench", "art-scale")


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _half_adapter(tmp: Path) -> Path:
    folder = tmp / "adapter"
    _write(folder / "adapter_config.json", json.dumps({"peft_type": "LORA", "r": 8}).encode())
    return folder


def _truncated_png(tmp: Path) -> Path:
    full = _png(tmp / "full.png", size=(128, 128))
    noise = np.random.default_rng(0).integers(0, 256, (128, 128, 3), np.uint8)
    Image.fromarray(noise).save(full)
    return _write(tmp / "truncated.png", full.read_bytes()[:2000])


@dataclass(frozen=True)
class Outcome:
    returncode: int
    stdout: str
    stderr: str
    elapsed_s: float
    out: Path  # the run folder the entry point was told to use


def run_case(tmp: Path, case: Case) -> Outcome:
    out = tmp / "out"
    given = case.args(tmp)
    base = [
        f"output_dir={out}",
        f"logging.tracking_uri=sqlite:///{tmp}/mlflow.db",
        f"logging.artifact_location={tmp}/artifacts",
        "rollout.num_workers=2",
    ]
    base = [b for b in base if b.split("=")[0] not in {g.split("=")[0] for g in given}]
    if case.prog == "art-bench":
        given += ["--out", str(out)]
    cmd = [str(BIN / case.prog), *([] if case.prog in PLAIN_ARGS else base), *given]
    start = time.monotonic()
    try:
        proc = subprocess.run(
            cmd,
            cwd=tmp,
            capture_output=True,
            text=True,
            timeout=180,
            env={**os.environ, **case.env},
        )
    except subprocess.TimeoutExpired as e:  # that case fails, not the others
        return Outcome(-1, "", f"timed out after {e.timeout}s: {e.stderr!r:.2000}", e.timeout, out)
    return Outcome(proc.returncode, proc.stdout, proc.stderr, time.monotonic() - start, out)


@pytest.fixture(scope="module")
def outcomes(request, tmp_path_factory, tiny_model_path) -> dict[str, Outcome]:
    """Every selected case's run, CONCURRENT_RUNS at a time (each is a fresh process that mostly
    imports, so two cores run them about twice as fast as one by one)."""
    selected = []
    for item in request.session.items:
        callspec = getattr(item, "callspec", None)
        if item.module is request.module and callspec is not None and "case" in callspec.params:
            selected.append(callspec.params["case"])
    tmps = {c.name: tmp_path_factory.mktemp("bad") for c in selected}
    with ThreadPoolExecutor(CONCURRENT_RUNS) as pool:
        futures = {
            c.name: pool.submit(run_case, tmps[c.name], c)
            for c in selected
            if c.name not in BOUNDED
        }
    timed = {c.name: run_case(tmps[c.name], c) for c in selected if c.name in BOUNDED}
    return {**{name: future.result() for name, future in futures.items()}, **timed}


CONCURRENT_RUNS = 3
# Cases whose point is a bounded wait: timed, so run alone, after the others.
BOUNDED = ("Ray address that does not answer", "hub model id with the hub unreachable")


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_is_one_clear_line(outcomes, case):
    run = outcomes[case.name]
    lines = [ln for ln in run.stderr.splitlines() if ln.startswith(f"{case.prog}: error:")]
    print(f"\n| {case.name} | `{lines[0] if lines else run.stderr[-300:]}` |")
    assert run.returncode == 2, run.stderr[-3000:]
    assert "Traceback" not in run.stderr and "Traceback" not in run.stdout
    assert len(lines) == 1 and case.expected in lines[0], run.stderr[-2000:]
    assert not run.out.exists() or not any(run.out.iterdir()), "a run folder was written"
    assert not (run.out.parent / "mlflow.db").exists()
    assert run.elapsed_s < 30 or case.name not in BOUNDED, f"{run.elapsed_s:.0f}s"


def test_set_image_refuses_what_is_not_a_complete_png(tiny_model_path):
    from rollout_worker.worker import RolloutWorker
    from shared.artifact import encode_png
    from shared.messages import WorkerSettings  # beside the import of the worker

    worker = RolloutWorker(WorkerSettings("hf", tiny_model_path))
    png = encode_png(np.random.default_rng(0).integers(0, 256, (64, 64, 3), np.uint8))
    with pytest.raises(ValueError, match="not PNG data .* give the bytes of a PNG file"):
        worker.set_image(1, b"GIF89a....")
    with pytest.raises(ValueError, match="cannot be decoded"):
        worker.set_image(1, png[: len(png) // 2])
    assert worker.set_image(2, png) == 2
    with pytest.raises(ValueError, match="went back from 2 to 1"):
        worker.set_image(1, png)
    assert worker.version == 2  # a refused update leaves the worker as it was


def test_a_reward_that_raises_scores_zero_and_too_many_stop_the_run(caplog):
    from learner.driver.rollouts import MAX_REWARD_ERROR_FRAC, score_groups
    from shared.messages import Completion, RolloutRequest
    from shared.tasks import load_task

    class Flaky:
        name = "flaky"
        score = staticmethod(lambda ex, text: 1.0)

        @staticmethod
        def reward(ex, text):
            if text == "boom":
                raise KeyError("tool schema")
            return 1.0 if text == "ok" else float("nan")

    task = load_task("synthetic")
    examples = task.examples("train", limit=1)
    prompt = "<|vision_start|><|image_pad|><|vision_end|>q"
    comps = [
        Completion(0, (1,), (-0.1,), "stop", text, 0, prompt_token_ids=(5,))
        for text in ("ok", "boom", "nan?", "ok")
    ]
    groups, scores = score_groups(Flaky, examples, [RolloutRequest(0, prompt, 4)], [comps], 8, 0)
    assert sum(scores.failed) == 2 and groups[0].rewards == (1.0, 0.0, 0.0, 1.0)
    assert groups[0].accuracies == (1.0, 0.0, 0.0, 1.0)
    assert "reward flaky failed on example synthetic-train-0: raised KeyError" in caplog.text
    assert MAX_REWARD_ERROR_FRAC == 0.10

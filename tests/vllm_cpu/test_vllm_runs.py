"""`art-train rollout=vllm` and `art-eval` with vLLM's CPU build on the embedded default, and the
paper's deployment claim: a stock `vllm serve` serves the trained PNG, chosen per request."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

pytestmark = pytest.mark.vllm

REPO = Path(__file__).resolve().parents[2]
STEPS = 25


@pytest.fixture(scope="module")
def trained(ray_local, vllm_python, tmp_path_factory):
    """The embedded default trained with vLLM rollouts: (cfg, summary, tmp folder)."""
    from learner.driver.cli import compose_config
    from learner.driver.train import train

    tmp = tmp_path_factory.mktemp("vllm-train")
    cfg = compose_config(
        f"logging.tracking_uri=sqlite:///{tmp}/mlflow.db",
        f"logging.artifact_location={tmp}/artifacts",
        "rollout=vllm", f"rollout.python={vllm_python}", "rollout.max_model_len=512",
        f"steps={STEPS}", "eval.every=0",
        run_dir=str(tmp / "run"),
    )  # fmt: skip
    return cfg, train(cfg), tmp


def test_art_train_with_vllm_rollouts_raises_the_reward(trained):
    cfg, summary, _ = trained
    # null became 0 without a GPU (the CPU build), 1 with one
    assert cfg.rollout.num_gpus_per_worker == int(os.environ.get("ART_VLLM_TEST_GPUS", "0"))
    figure = (
        f"vLLM rollouts, {STEPS} steps: reward {summary['reward_first5']:.3f} -> "
        f"{summary['reward_last5']:.3f} in {summary['wall_time_s']:.0f}s "
        f"(phases {summary['mean_phase_s']})"
    )
    print(figure)
    assert summary["reward_last5"] - summary["reward_first5"] >= 0.3, figure
    assert summary["worker_restarts"] == 0


@pytest.fixture(scope="module")
def evaluated(trained, vllm_python):
    """art-eval of none, seed and the trained PNG, once with vLLM and once with the HF engine."""
    from learner.driver.cli import compose_config
    from learner.driver.evaluate import evaluate

    _, summary, tmp = trained
    conditions = f"eval.conditions=[none,seed,{summary['image_path']}]"
    common = (f"logging.tracking_uri=sqlite:///{tmp}/mlflow.db", conditions)
    engines = {
        "vllm": ("rollout=vllm", f"rollout.python={vllm_python}", "rollout.max_model_len=512"),
        "hf": ("rollout=hf",),
    }
    return {
        name: evaluate(compose_config(*common, *extra, run_dir=str(tmp / f"eval-{name}")))
        for name, extra in engines.items()
    }


def test_art_eval_with_vllm_gives_the_table_hf_gives(evaluated, trained):
    vllm, hf = evaluated["vllm"], evaluated["hf"]
    table = {c: (round(vllm[c]["accuracy"], 3), round(hf[c]["accuracy"], 3)) for c in vllm}
    print(f"accuracy (vLLM bf16, HF fp32) per condition: {table}")
    assert list(vllm) == list(hf)
    for condition in vllm:
        assert set(vllm[condition]) == set(hf[condition])
        assert vllm[condition]["n"] == hf[condition]["n"] == 64
        assert vllm[condition]["ids"] == hf[condition]["ids"]
    art = trained[1]["image_path"]
    assert vllm[art]["accuracy"] > vllm["none"]["accuracy"], table
    assert abs(vllm[art]["accuracy"] - hf[art]["accuracy"]) <= 0.1, table


@pytest.fixture(scope="module")
def server(stock_server):
    """A stock `vllm serve` of the embedded model (OpenAI-compatible) on loopback."""
    return stock_server.url + "/v1", stock_server.proc


def serving_client():
    spec = importlib.util.spec_from_file_location("art_client", REPO / "deploy/serve/client.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_stock_vllm_server_serves_two_pngs_per_request_as_art_eval_decodes(
    server, trained, evaluated
):
    """The serving recipe's client (`shared.serving.art_messages`) against `vllm serve`: the
    trained PNG and the seed PNG, alternated request by request on one running server, give
    art-eval's greedy completions for the same questions and images (art-eval on vLLM)."""
    from learner.driver.evaluate import condition_image
    from shared.tasks import load_task

    base_url, proc = server
    cfg, summary, tmp = trained
    seed_png = tmp / "seed-condition.png"
    seed_png.write_bytes(condition_image(cfg, "seed"))
    task = load_task(cfg.task.name, **cfg.task.options)
    questions = {ex.uid: ex.question for ex in task.examples("test")}
    client, results = serving_client(), evaluated["vllm"]
    pngs = {summary["image_path"]: summary["image_path"], "seed": seed_png}
    served, expected = [], []
    for i in range(5):  # art-eval keeps its first 5 completions per condition
        for condition, png in pngs.items():  # alternate: the PNG is chosen per request
            sample = results[condition]["samples"][i]
            reply = client.ask(
                base_url, "tiny", png, questions[sample["uid"]], task.max_new_tokens, 1.0
            )
            served.append(reply.strip())
            expected.append(sample["completion"].strip())
    print(f"served {served}\nart-eval {expected}")
    assert served == expected
    assert set(served[0::2]) != set(served[1::2]), "both PNGs gave the same answers"
    assert proc.poll() is None  # one server throughout, never restarted

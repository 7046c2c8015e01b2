"""art-eval on CPU through the same Ray workers and HF engine as training."""

import json
from pathlib import Path

import numpy as np
import pytest

from learner.driver.evaluate import condition_image, evaluate
from shared.artifact import ArtifactMismatchError, encode_png

FIELDS = (
    "accuracy",
    "format_rate",
    "n",
    "mean_completion_tokens",
    "tokens_per_s",
    "model",
    "task",
    "split",
    "image_sha256",
)


@pytest.mark.slow
def test_trained_image_beats_the_text_only_baseline(trained_run, make_cfg):
    train_cfg, summary = trained_run
    art = summary["image_path"]
    cfg = make_cfg(f"eval.conditions=[none,seed,{art}]")
    results = evaluate(cfg)
    on_disk = json.loads((Path(cfg.run_dir) / "eval.json").read_text())
    assert set(on_disk) == {"none", "seed", art}
    for metrics in on_disk.values():
        for field in FIELDS:
            assert field in metrics, field
        assert metrics["n"] == 64 and metrics["task"] == "synthetic"  # the whole test split
    assert on_disk["none"]["image_sha256"] is None
    assert (
        on_disk[art]["image_sha256"]
        == __import__("hashlib").sha256(Path(art).read_bytes()).hexdigest()
    )
    print({c: m["accuracy"] for c, m in results.items()})
    # The same direction the training reward showed.
    assert results[art]["accuracy"] > results["none"]["accuracy"]
    assert results[art]["accuracy"] > results["seed"]["accuracy"]


def test_art_eval_takes_the_whole_split_with_the_papers_settings(ray_local, fixtures_dir, make_cfg):
    cfg = make_cfg(
        "task=gsm8k",
        f"task.options.data_dir={fixtures_dir / 'gsm8k'}",
        "eval.conditions=[none,seed]",
        "eval.max_new_tokens=8",
    )
    results = evaluate(cfg)
    on_disk = json.loads((Path(cfg.run_dir) / "eval.json").read_text())
    for condition in ("none", "seed"):
        metrics = on_disk[condition]
        assert metrics["n"] == 24 and metrics["ids"] == [f"gsm8k-{i}" for i in range(24)]
        assert metrics["split"] == "test" and metrics["task"] == "gsm8k"
        assert metrics["presence_penalty"] == 1.0
        assert 0 <= results[condition]["accuracy"] <= 1
        assert 0 < metrics["mean_completion_tokens"] <= 8
    limited = make_cfg(
        "task=gsm8k",
        f"task.options.data_dir={fixtures_dir / 'gsm8k'}",
        "eval.conditions=[none]",
        "eval.max_new_tokens=4",
        "eval.limit=5",
    )
    limited.run_dir = str(Path(cfg.run_dir).parent / "limited")
    assert evaluate(limited)["none"]["ids"] == [f"gsm8k-{i}" for i in range(5)]


@pytest.mark.slow
def test_art_eval_on_gsm8k_evaluates_all_1319_test_examples(ray_local, data_dir, make_cfg):
    cfg = make_cfg(
        "task=gsm8k",
        f"task.options.data_dir={data_dir / 'gsm8k'}",
        "eval.conditions=[none]",
        "eval.max_new_tokens=4",
    )
    results = evaluate(cfg)
    assert results["none"]["n"] == 1319 and len(set(results["none"]["ids"])) == 1319


def test_png_of_another_model_or_size_is_refused(make_cfg, tmp_path):
    cfg = make_cfg()
    pixels = np.zeros((64, 64, 3), np.uint8)
    other_model = tmp_path / "other.png"
    other_model.write_bytes(
        encode_png(
            pixels,
            {
                "model": "Qwen/Qwen3.5-0.8B",
                "height": 64,
                "width": 64,
                "prompt_layout": "user:image-then-text",
            },
        )
    )
    with pytest.raises(
        ArtifactMismatchError, match="trained for model 'Qwen/Qwen3.5-0.8B', not 'tiny'"
    ):
        condition_image(cfg, str(other_model))
    other_size = tmp_path / "size.png"
    other_size.write_bytes(
        encode_png(
            np.zeros((96, 96, 3), np.uint8),
            {"model": "tiny", "height": 96, "width": 96, "prompt_layout": "user:image-then-text"},
        )
    )
    with pytest.raises(ArtifactMismatchError, match="96x96, the config asks for 64x64"):
        condition_image(cfg, str(other_size))
    untagged = tmp_path / "plain.png"
    untagged.write_bytes(encode_png(pixels))
    with pytest.raises(ArtifactMismatchError, match="no ART metadata"):
        condition_image(cfg, str(untagged))
    cfg.eval.allow_untagged_images = True
    assert condition_image(cfg, str(untagged)) == untagged.read_bytes()


@pytest.mark.gpu
def test_art_eval_through_vllm(make_cfg):
    cfg = make_cfg(
        "rollout=vllm", "rollout.dtype=float32", "eval.conditions=[none,seed]", "eval.limit=8"
    )
    results = evaluate(cfg)
    assert results["seed"]["n"] == 8 and results["seed"]["mean_completion_tokens"] > 0

"""The LoRA baseline through the driver, and art-compare end to end."""

import json
from pathlib import Path

import pytest

from learner.driver import train as driver


def test_a_lora_run_leaves_a_standard_peft_adapter(ray_local, tmp_path, make_cfg, tiny_model_path):
    cfg = make_cfg("method=lora", "steps=3", "eval.every=3", "eval.val_size=8", "algo.group_size=4")
    summary = driver.train(cfg)
    run = Path(cfg.run_dir)
    assert summary["method"] == "lora" and summary["adapter_path"] == str(
        (run / "adapter").resolve()
    )
    assert summary["image_path"] is None and not (run / "art.png").exists()
    folder = run / "adapter"
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 16
    assert config["base_model_name_or_path"] == "tiny"
    assert json.loads((folder / "art_lora.json").read_text())["with_image"] is False
    assert (run / "best_adapter" / "adapter_model.safetensors").exists()
    assert summary["sync_bytes_mean"] == (folder / "adapter_model.safetensors").stat().st_size
    assert summary["trainable_parameters"] > 0 and (run / "curves.png").exists()

    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    base = AutoModelForImageTextToText.from_pretrained(tiny_model_path)
    loaded = PeftModel.from_pretrained(base, str(folder))  # a standard PEFT folder
    assert any("lora_A" in n for n, _ in loaded.named_parameters())


@pytest.mark.slow
def test_compare_trains_both_methods_and_both_beat_the_text_only_model(ray_local, tmp_path):
    import mlflow

    from learner.driver.compare import compare

    overrides = [
        f"logging.tracking_uri=sqlite:///{tmp_path}/mlflow.db",
        f"logging.artifact_location={tmp_path}/artifacts",
        "steps=30",  # half of make compare's 60: both arms are past the text-only model by then
    ]
    report = compare(overrides, tmp_path / "cmp")
    on_disk = json.loads((tmp_path / "cmp/compare.json").read_text())
    assert on_disk == report
    assert set(report["conditions"]) == {"none", "seed", "art", "lora"}
    for method in ("art", "lora"):
        m = report["methods"][method]
        print(f"\n{method}: {m}")
        for key in (
            "accuracy",
            "format_rate",
            "mean_completion_tokens",
            "train_wall_time_s",
            "sync_bytes_per_step",
            "trainable_parameters",
            "artifact_bytes",
        ):
            assert key in m, key
        assert m["reward_last5"] > m["reward_first5"]
        assert m["accuracy"] > report["conditions"]["none"]["accuracy"]
    assert "| art |" in (tmp_path / "cmp/compare.md").read_text()
    assert (tmp_path / "cmp/compare.png").stat().st_size > 10_000
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    children = mlflow.search_runs(
        experiment_names=["art"], filter_string="tags.mlflow.parentRunId != ''"
    )
    assert len(children) == 3  # the two training runs and the evaluation


@pytest.mark.slow
def test_lora_with_the_seed_image_trains_and_resumes(ray_local, tmp_path, make_cfg):
    common = ("method=lora", "method.with_image=true", "eval.every=0", "algo.group_size=4")
    cfg = make_cfg("steps=2", "logging.checkpoint_every=1", *common)
    first = driver.train(cfg)
    assert first["method"] == "lora" and len(first["rewards"]) == 2
    meta = json.loads((Path(cfg.run_dir) / "adapter/art_lora.json").read_text())
    assert meta["with_image"] is True
    resumed = make_cfg(
        "steps=3", f"resume_from={Path(cfg.run_dir) / 'checkpoints/last.pt'}", *common
    )
    again = driver.train(resumed)
    assert len(again["rewards"]) == 3 and again["rewards"][:2] == first["rewards"]

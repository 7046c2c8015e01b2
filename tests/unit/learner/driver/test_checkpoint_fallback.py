"""Resuming never stops on one bad file: the newest checkpoint of the run that loads and fits
(real files: truncated, garbage, another model's), and what `logging.keep_checkpoints` keeps."""

import pytest
import torch

from learner.driver.checkpoint import (
    CheckpointError,
    DriverState,
    estimate_checkpoint_bytes,
    prune_checkpoints,
    resume_point,
    save_checkpoint,
)


def _save(folder, name: str, step: int, model: str = "tiny"):
    state = {"method": "art", "model": model, "height": 64, "width": 64}
    state["theta_CHW"] = torch.full((3, 64, 64), float(step))
    return save_checkpoint(folder / name, state, DriverState(step=step))


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _point(folder, given=None):
    return resume_point(folder, "tiny", 64, 64, "art", given)


def test_an_unreadable_last_pt_falls_back_to_the_newest_step_that_loads(tmp_path, caplog):
    ckpts = tmp_path / "run" / "checkpoints"
    for step in (2, 4, 6):
        _save(ckpts, f"step_{step:06d}.pt", step)
    _save(ckpts, "last.pt", 6)
    _truncate(ckpts / "last.pt")
    (ckpts / "step_000006.pt").write_bytes(b"not a checkpoint")
    path, learner, driver = _point(ckpts)
    assert path == ckpts / "step_000004.pt" and driver.step == 4
    assert float(learner["theta_CHW"][0, 0, 0]) == 4.0
    assert "skipping" in caplog.text and "last.pt" in caplog.text
    assert "step_000006.pt" in caplog.text and "2 checkpoint file(s) skipped" in caplog.text
    # the same through resume_from=<run>/checkpoints/last.pt
    assert _point(ckpts, ckpts / "last.pt")[2].step == 4


def test_last_pt_is_the_newest_unless_a_later_step_file_loads(tmp_path):
    ckpts = tmp_path / "checkpoints"
    _save(ckpts, "step_000003.pt", 3)
    _save(ckpts, "last.pt", 3)
    assert _point(ckpts)[0] == ckpts / "last.pt"
    _save(ckpts, "step_000005.pt", 5)  # its last.pt write failed (a full disk)
    assert _point(ckpts)[0] == ckpts / "step_000005.pt"
    (ckpts / "last.pt").unlink()
    assert _point(ckpts)[2].step == 5
    assert resume_point(tmp_path / "new", "tiny", 64, 64) is None  # nothing: a new run


def test_an_explicit_step_file_is_taken_as_given(tmp_path):
    ckpts = tmp_path / "checkpoints"
    _save(ckpts, "step_000002.pt", 2)
    _save(ckpts, "step_000004.pt", 4)
    _truncate(ckpts / "step_000004.pt")
    with pytest.raises(CheckpointError, match="step_000004.pt is not a readable ART checkpoint"):
        _point(ckpts, ckpts / "step_000004.pt")


def test_when_none_loads_the_error_names_each_file(tmp_path):
    ckpts = tmp_path / "checkpoints"
    _save(ckpts, "step_000001.pt", 1)
    _save(ckpts, "last.pt", 1)
    _truncate(ckpts / "last.pt")
    (ckpts / "step_000001.pt").write_bytes(b"")
    with pytest.raises(CheckpointError) as err:
        _point(ckpts)
    message = str(err.value)
    assert message.startswith(f"no checkpoint in {ckpts} can be resumed from: last.pt: ")
    assert "; step_000001.pt: is not a readable ART checkpoint" in message
    assert "\n" not in message


def test_checkpoints_of_another_model_keep_their_refusal(tmp_path):
    ckpts = tmp_path / "checkpoints"
    _save(ckpts, "step_000002.pt", 2, model="qwen3_5_0_8b_random")
    _save(ckpts, "last.pt", 2, model="qwen3_5_0_8b_random")
    with pytest.raises(CheckpointError, match="refusing to resume from .*last.pt: it was trained"):
        _point(ckpts)


def test_keep_checkpoints_keeps_the_newest_and_the_best(tmp_path):
    ckpts = tmp_path / "checkpoints"
    for step in range(1, 8):
        _save(ckpts, f"step_{step:06d}.pt", step)
    removed = prune_checkpoints(ckpts, 2, {3, None})
    assert sorted(p.name for p in removed) == [f"step_00000{s}.pt" for s in (1, 2, 4, 5)]
    assert sorted(p.name for p in ckpts.glob("*.pt")) == [
        "step_000003.pt",
        "step_000006.pt",
        "step_000007.pt",
    ]
    assert prune_checkpoints(ckpts, None, set()) == []


def test_the_size_estimate_covers_a_real_checkpoint(tmp_path):
    from learner.driver.cli import compose_config

    cfg = compose_config("steps=60")
    state = {"method": "art", "model": "tiny", "height": 64, "width": 64, "version": 60}
    theta = torch.randn(3, 64, 64)
    state.update(theta_CHW=theta, seed_uint8_HWC=torch.zeros(64, 64, 3, dtype=torch.uint8))
    state["optimizer"] = {"state": {0: {"exp_avg": theta.clone(), "exp_avg_sq": theta.clone()}}}
    driver = DriverState(step=60, history={"reward_mean": [0.5] * 60})
    real = save_checkpoint(tmp_path / "last.pt", state, driver).stat().st_size
    estimate = estimate_checkpoint_bytes(cfg)
    assert real <= estimate <= 4 * real

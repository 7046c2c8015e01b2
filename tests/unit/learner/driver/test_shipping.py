"""art-submit ships the task's files outside the repository and rewrites their paths."""

import pytest

from learner.driver.cli import compose_config
from learner.driver.shipping import REPO, plan_shipment
from shared.errors import UserError
from shared.tasks.entrypoints import SHIPPED_ENV


def _task(tmp_path):
    folder = tmp_path / "letters"
    (folder / "data").mkdir(parents=True)
    (folder / "data" / "train.jsonl").write_text('{"question": "q", "answer": "F"}\n')
    (folder / "reward.py").write_text("def letter(completions, **kw):\n    return [1.0]\n")
    return folder


def test_folders_outside_the_repo_ship_once_and_their_paths_are_rewritten(tmp_path):
    folder = _task(tmp_path)
    overrides = [
        "task=custom",
        f"task.options.data_files={{train: {folder}/data/train.jsonl, test: {folder}/data/train.jsonl}}",
        f"task.rewards=[{folder}/reward.py:letter]",
        "task.options.question_field=question",
        "steps=2",
    ]
    shipment = plan_shipment(compose_config(*overrides).task)
    assert shipment.py_modules == [str(folder)]  # data/ travels inside letters/
    assert shipment.env() == {SHIPPED_ENV: "letters"}
    job = shipment.rewrite(overrides)
    assert job == [
        "task=custom",
        "task.options.data_files={train: letters/data/train.jsonl, test: letters/data/train.jsonl}",
        "task.rewards=[letters/reward.py:letter]",
        "task.options.question_field=question",
        "steps=2",
    ]
    assert compose_config(*job).task.rewards == ["letters/reward.py:letter"]  # still a config


def test_a_module_outside_the_repo_ships_as_a_package(tmp_path, monkeypatch):
    package = tmp_path / "my_rewards"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "math.py").write_text("def acc(completions, **kw):\n    return [1.0]\n")
    (tmp_path / "single.py").write_text("def acc(completions, **kw):\n    return [1.0]\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = compose_config("task.rewards=[my_rewards.math:acc,single:acc,json:dumps]").task
    shipment = plan_shipment(cfg)
    assert shipment.py_modules == [str(package), str(tmp_path / "single.py")]
    assert shipment.rewrites == {} and shipment.folders == []  # imported by name as before


def test_repo_paths_become_relative_and_clashes_are_refused(tmp_path, monkeypatch):
    fixture = REPO / "tests" / "fixtures" / "gsm8k"
    monkeypatch.chdir(tmp_path)
    shipment = plan_shipment(compose_config("task=gsm8k", f"task.options.data_dir={fixture}").task)
    assert shipment.py_modules == []
    assert shipment.rewrites == {str(fixture): "tests/fixtures/gsm8k"}
    a, b = _task(tmp_path / "a"), _task(tmp_path / "b")
    cfg = compose_config(f"task.rewards=[{a}/reward.py:letter,{b}/reward.py:letter]").task
    with pytest.raises(UserError, match="letters names more than one"):
        plan_shipment(cfg)
    shadow = tmp_path / "json"
    shadow.mkdir()
    (shadow / "r.py").write_text("def f(completions, **kw):\n    return [1.0]\n")
    with pytest.raises(UserError, match="'json', the name of an importable module"):
        plan_shipment(compose_config(f"task.rewards=[{shadow}/r.py:f]").task)


def test_option_words_are_not_paths_whatever_the_folder_holds(tmp_path, monkeypatch):
    (tmp_path / "default").mkdir()  # a folder named like reasoning-gym's system_prompt option
    monkeypatch.chdir(tmp_path)
    cfg = compose_config("task=reasoning_gym").task
    assert plan_shipment(cfg).py_modules == []

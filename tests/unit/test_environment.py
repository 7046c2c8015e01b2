"""The locked environment (deploy/learner/lock.py): the lock files agree with pyproject.toml and
the README, the check fails when they do not, and this environment is the lock."""

import importlib.metadata as md
import importlib.util
import re
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("art_lock", REPO / "deploy/learner/lock.py")
lock = importlib.util.module_from_spec(spec)
spec.loader.exec_module(lock)


def test_the_lock_files_agree_with_pyproject_and_the_readme():
    assert lock.check() == []


@pytest.fixture
def copy(tmp_path, monkeypatch):
    """The lock module pointed at a copy of pyproject.toml, the README and the lock files."""
    for path in (lock.PYPROJECT, lock.README, lock.LOCK, lock.LOCK_TASKS, lock.LOCK_CUDA):
        shutil.copy(path, tmp_path / path.name)
    monkeypatch.setattr(lock, "ROOT", tmp_path)
    monkeypatch.setattr(lock, "PYPROJECT", tmp_path / "pyproject.toml")
    monkeypatch.setattr(lock, "README", tmp_path / "README.md")
    locks = {tmp_path / path.name: v for path, v in lock.LOCKS.items()}
    monkeypatch.setattr(lock, "LOCKS", locks)
    for name in ("LOCK", "LOCK_TASKS", "LOCK_CUDA"):
        monkeypatch.setattr(lock, name, tmp_path / getattr(lock, name).name)
    return tmp_path


def test_a_dependency_added_to_pyproject_fails_the_check(copy):
    text = (copy / "pyproject.toml").read_text()
    (copy / "pyproject.toml").write_text(
        text.replace('"tqdm>=4.66",', '"tqdm>=4.66", "art-no-such-package",')
    )
    problems = lock.check()
    assert any("not written from the current pyproject.toml" in p for p in problems), problems
    assert any("lacks art-no-such-package" in p for p in problems), problems


def test_a_lock_edited_by_hand_or_a_stale_readme_fails_the_check(copy):
    text = (copy / "lock.txt").read_text()
    version = lock.pinned(copy / "lock.txt")["transformers"]
    (copy / "lock.txt").write_text(text.replace(f"transformers=={version}", "transformers==5.20.0"))
    problems = lock.check()
    assert any("transformers==5.20.0, outside" in p for p in problems), problems
    assert any("README.md's tested versions differ" in p for p in problems), problems


def test_this_environment_is_the_lock():
    """`make install` installs exactly deploy/learner/lock.txt (or lock-tasks.txt, which holds
    the same versions): every locked package is installed at its locked version."""
    wrong = {}
    for name, version in lock.pinned(lock.LOCK).items():
        try:
            installed = md.version(name)
        except md.PackageNotFoundError:
            installed = None
        # a local version label (torch's +cu130) is the build of the same release
        if installed is None or re.sub(r"\+.*", "", installed) != version:
            wrong[name] = (version, installed)
    assert not wrong, f"not the lock (locked, installed): {wrong}; run `make install`"

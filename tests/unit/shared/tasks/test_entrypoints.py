"""The one door: a task class, a reward function by import path, a data path."""

import sys

import pytest

from shared.errors import UserError
from shared.tasks import TASKS, Task, load_task, load_task_class
from shared.tasks.entrypoints import SHIPPED_ENV, EntryPointError, load_entry, resolve_path

TASK_FILE = """
from shared.tasks.base import Example, Task

class Echo(Task):
    name = "echo"
    def __init__(self, n: int = 3, word: str = "hi"):
        self.n, self.word = n, word
    def examples(self, split, limit=None):
        return [Example(f"e{i}", self.word, self.word) for i in range(self.n)][:limit]
    def score(self, example, completion):
        return float(completion.strip() == example.answer)

class NoScore(Task):
    def examples(self, split, limit=None):
        return []

def not_a_class():
    pass
"""


@pytest.fixture
def user_dir(tmp_path):
    (tmp_path / "my_task.py").write_text(TASK_FILE)
    (tmp_path / "broken.py").write_text("import no_such_module_xyz\n")
    return tmp_path


def test_every_built_in_task_loads_through_the_same_door():
    for name, target in TASKS.items():
        if name == "reasoning_gym" and "reasoning_gym" not in sys.modules:
            pytest.importorskip("reasoning_gym")
        cls = load_task_class(name)
        assert cls is load_entry(target, "task.name") and issubclass(cls, Task)


def test_a_task_class_by_file_path_or_module_path(user_dir, monkeypatch):
    task = load_task(f"{user_dir}/my_task.py:Echo", n=2, word="yo")
    assert [ex.question for ex in task.examples("train")] == ["yo", "yo"]
    monkeypatch.syspath_prepend(str(user_dir))
    assert load_task("my_task:Echo").n == 3


def test_task_entry_points_are_refused_in_one_line(user_dir):
    cases = [
        (f"{user_dir}/my_task.py:Nope", "has no .Nope. \\(it has: Echo, Example, NoScore"),
        (f"{user_dir}/missing.py:Echo", "missing.py does not exist"),
        (f"{user_dir}/broken.py:Echo", "importing .* failed \\(ModuleNotFoundError"),
        (f"{user_dir}/my_task.py:not_a_class", "is a function, not a class"),
        (f"{user_dir}/my_task.py:NoScore", "does not define score"),
        ("no_such_pkg_abc.tasks:T", "no module named 'no_such_pkg_abc.tasks' on the Python path"),
        ("mmlu", "unknown task 'mmlu'.*task=class task.name="),
    ]
    for spec, message in cases:
        with pytest.raises(UserError, match=message) as err:
            load_task(spec)
        assert "\n" not in str(err.value)
    with pytest.raises(UserError, match=r"do not fit its constructor .* it takes: n, word"):
        load_task(f"{user_dir}/my_task.py:Echo", size=3)


def test_an_import_path_needs_a_name_after_the_colon():
    with pytest.raises(EntryPointError, match="is no import path"):
        load_entry("rewards.py", "task.rewards")


def test_shipped_relative_paths_are_found_on_the_python_path(tmp_path, monkeypatch):
    landed = tmp_path / "_ray_pkg_abc"
    (landed / "letters").mkdir(parents=True)
    (landed / "letters" / "rows.jsonl").write_text("{}\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(landed))
    assert not resolve_path("letters/rows.jsonl").is_absolute()  # not shipped: as given
    monkeypatch.setenv(SHIPPED_ENV, "letters")
    assert resolve_path("letters/rows.jsonl") == landed / "letters" / "rows.jsonl"
    assert resolve_path("other/rows.jsonl").as_posix() == "other/rows.jsonl"

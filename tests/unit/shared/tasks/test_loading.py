import json
from pathlib import Path

import pytest

from shared.tasks import DatasetRowError, load_task

TOOLMIND_FIXTURE = Path(__file__).resolve().parents[3] / "fixtures" / "toolmind" / "sample.jsonl"


def _write_jsonl(path, rows):
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")


def test_malformed_gsm8k_row_names_file_and_row(tmp_path):
    path = tmp_path / "train.jsonl"
    _write_jsonl(
        path, [{"question": "q", "answer": "x\n#### 3"}, {"question": "q2", "answer": "no final"}]
    )
    with pytest.raises(DatasetRowError, match=rf"{path} row 1: .*####"):
        load_task("gsm8k", data_dir=str(tmp_path)).examples("train")


def test_missing_field_and_broken_json_name_the_row(tmp_path):
    path = tmp_path / "train.jsonl"
    _write_jsonl(path, [{"question": "q", "answer": "#### 1"}, {"answer": "#### 2"}])
    with pytest.raises(DatasetRowError, match=r"row 1: missing field 'question'"):
        load_task("gsm8k", data_dir=str(tmp_path)).examples("train")
    _write_jsonl(path, [{"question": "q", "answer": "#### 1"}, '{"question": "q", "answer": '])
    with pytest.raises(DatasetRowError, match=rf"{path} row 1 \(line 2\): invalid JSON"):
        load_task("gsm8k", data_dir=str(tmp_path)).examples("train")


def test_malformed_svamp_and_toolmind_rows(tmp_path):
    svamp = tmp_path / "SVAMP.json"
    svamp.write_text(
        json.dumps(
            [
                {"Body": "b", "Question": "q", "Answer": 1.0},
                {"Body": "b", "Question": "q", "Answer": "one"},
            ]
        )
    )
    with pytest.raises(DatasetRowError, match=r"SVAMP.json row 1: field 'Answer'"):
        load_task("svamp", data_dir=str(tmp_path)).examples("all")
    tm = tmp_path / "tm.jsonl"
    _write_jsonl(tm, [{"conversations": [{"role": "robot", "content": "x"}], "tools": []}])
    with pytest.raises(DatasetRowError, match=r"tm.jsonl row 0: conversation turn 0"):
        load_task("toolmind", data_files=str(tm)).examples("all")


def test_missing_files_and_unknown_task_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="train.jsonl"):
        load_task("gsm8k", data_dir=str(tmp_path)).examples("train")
    with pytest.raises(ValueError, match="one of: synthetic, gsm8k"):
        load_task("mmlu")


def test_gpqa_local_rows_shuffle_options_per_example_with_a_seed(tmp_path):
    rows = [
        {
            "Question": f"Q{i}?",
            "Correct Answer": "right",
            "Incorrect Answer 1": "w1",
            "Incorrect Answer 2": "w2",
            "Incorrect Answer 3": "w3",
            "Record ID": f"rec{i}",
        }
        for i in range(12)
    ]
    path = tmp_path / "gpqa.jsonl"
    _write_jsonl(path, rows)
    test_path = tmp_path / "diamond.jsonl"
    _write_jsonl(test_path, rows[:2])
    task = load_task("gpqa", train_files=str(path), test_files=str(test_path))
    examples = task.examples("train")
    assert len(examples) == 10  # the 2 test items are not trained on
    letters = {ex.answer for ex in examples}
    assert len(letters) > 1  # the correct option is not always in the same place
    for ex in examples:
        assert f"({ex.answer}) right" in ex.question
        assert "The correct answer is (X)" in ex.question
        assert task.score(ex, f"The correct answer is ({ex.answer})") == 1.0
    again = load_task("gpqa", train_files=str(path), test_files=str(test_path)).examples("train")
    assert [e.answer for e in again] == [e.answer for e in examples]


def test_gpqa_never_trains_on_a_test_item(tmp_path):
    def row(i, question):
        return {
            "Question": question,
            "Correct Answer": "r",
            "Incorrect Answer 1": "a",
            "Incorrect Answer 2": "b",
            "Incorrect Answer 3": "c",
            "Record ID": f"rec{i}",
        }

    main = tmp_path / "main.jsonl"
    diamond = tmp_path / "diamond.jsonl"
    _write_jsonl(main, [row(0, "What is  X?"), row(1, "What is Y?"), row(2, "What is Z?")])
    _write_jsonl(diamond, [row(9, "what is x?\n"), row(8, "What is Z?")])
    task = load_task("gpqa", train_files=str(main), test_files=str(diamond))
    assert [e.uid for e in task.examples("train")] == ["rec1"]  # matched by question text
    assert [e.uid for e in task.examples("test")] == ["rec9", "rec8"]
    same = load_task("gpqa", train_files=str(diamond), test_files=str(diamond))
    with pytest.raises(ValueError, match="also a test item"):
        same.examples("train")


def test_gpqa_without_token_says_it_is_gated(monkeypatch):
    import datasets

    def refuse(*args, **kwargs):
        raise ConnectionError("401 Client Error: gated dataset")

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.setattr(datasets, "load_dataset", refuse)
    with pytest.raises(PermissionError, match="gated.*HF_TOKEN"):
        load_task("gpqa").examples("test")


def test_toolmind_fixture_rows():
    task = load_task("toolmind", data_files=str(TOOLMIND_FIXTURE), test_size=1)
    examples = task.examples("all")
    assert len(examples) == 5 and task.skipped_rows == 1
    london = examples[0]
    assert "<tools>" in london.question and '"get_current_time"' in london.question
    assert "<tool_response>" in london.question and "And what about in London?" in london.question
    assert json.loads(london.answer) == [
        {"name": "get_current_time", "arguments": {"timezone": "Europe/London"}}
    ]
    assert len(task.examples("train")) + len(task.examples("test")) == 5

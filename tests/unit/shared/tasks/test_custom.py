"""task=custom: local files or a hub dataset, a field mapping, a template, the splits."""

import csv
import json

import pytest

from shared.errors import UserError
from shared.tasks import DatasetRowError, load_task

ROWS = [
    {"qid": f"r{i}", "problem": f"What is {i} + {i}?", "solution": i + i, "topic": "add"}
    for i in range(20)
]
MAPPING = {"question_field": "problem", "answer_field": "solution", "id_field": "qid"}


def _jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_one_file_with_a_mapping_and_a_template_split_with_a_seed(tmp_path):
    path = _jsonl(tmp_path / "rows.jsonl", ROWS)
    task = load_task(
        "custom",
        data_files=str(path),
        prompt_template="[{topic}] {question} Answer with a number.",
        test_size=0.25,
        **MAPPING,
    )
    train, test = task.examples("train"), task.examples("test")
    assert len(test) == 5 and len(train) == 15
    assert not {e.uid for e in train} & {e.uid for e in test}
    assert {e.uid for e in train + test} == {r["qid"] for r in ROWS}
    first = next(e for e in train + test if e.uid == "r3")
    assert first.question == "[add] What is 3 + 3? Answer with a number."
    assert first.answer == "6"  # a number becomes text
    assert first.metadata == {"qid": "r3", "solution": 6, "topic": "add"}
    again = load_task("custom", data_files=str(path), test_size=0.25, **MAPPING)
    assert [e.uid for e in again.examples("test")] == [e.uid for e in test]  # seeded
    other = load_task("custom", data_files=str(path), test_size=0.25, split_seed=1, **MAPPING)
    assert [e.uid for e in other.examples("test")] != [e.uid for e in test]
    assert task.score(first, " 6.\n") == 1.0 and task.score(first, "7") == 0.0


def test_given_splits_csv_and_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    with open(tmp_path / "train.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["question", "answer"])
        writer.writeheader()
        writer.writerows({"question": f"q{i}", "answer": i} for i in range(3))
    pq.write_table(pa.Table.from_pylist([{"question": "t", "answer": "x"}]), tmp_path / "t.parquet")
    files = {"train": str(tmp_path / "train.csv"), "test": str(tmp_path / "t.parquet")}
    task = load_task("custom", data_files=files)
    assert [e.answer for e in task.examples("train")] == ["0", "1", "2"]
    assert [(e.uid, e.question) for e in task.examples("test")] == [("t-0", "t")]
    with pytest.raises(UserError, match="has no split 'validation': its splits are train, test"):
        task.examples("validation")


def test_a_hub_dataset_with_its_splits_or_one_split_seeded(monkeypatch):
    import shared.tasks.custom as custom

    asked = []

    def hub_rows(repo, config, split):
        asked.append((repo, config, split))
        return [{"question": f"{split} {i}", "answer": "a"} for i in range(10)]

    monkeypatch.setattr(custom, "load_hub_rows", hub_rows)
    task = load_task("custom", hub="acme/qa", hub_config="main")
    assert task.examples("test")[0].question == "test 0"
    assert asked == [("acme/qa", "main", "test")]
    one = load_task("custom", hub="acme/qa", hub_split="train", test_size=3)
    assert len(one.examples("test")) == 3 and len(one.examples("train")) == 7
    assert {e.question.split()[0] for e in one.examples("all")} == {"train"}


def test_rows_that_do_not_fit_the_mapping_name_the_file_and_row(tmp_path):
    path = tmp_path / "rows.jsonl"
    cases = [
        ([{"question": "q", "answer": "a"}, {"question": "q"}], {}, r"rows.jsonl row 1: missing field 'answer' .*task.options.answer_field"),
        ([{"problem": "q", "answer": "a"}], {}, r"row 0: missing field 'question' \(has \['answer', 'problem'\]\)"),
        ([{"question": ["q"], "answer": "a"}], {}, "row 0: question field 'question' should be text, got list"),
        ([{"question": "q", "answer": {"x": 1}}], {}, "row 0: answer field 'answer' should be text or a number"),
        ([{"question": "q", "answer": "a", "id": 1}, {"question": "r", "answer": "a", "id": 1}], {"id_field": "id"}, "row 1: id '1' repeats row 0"),
        ([{"question": "q", "answer": "a"}], {"prompt_template": "{question} {hint}"}, r"row 0: task.options.prompt_template names \{hint\}"),
        (['{"question": "q", "answer": "a"}', '{"question": '], {}, r"row 1 \(line 2\): invalid JSON"),
    ]  # fmt: skip
    for rows, options, message in cases:
        _jsonl(path, rows)
        with pytest.raises(DatasetRowError, match=message):
            load_task("custom", data_files={"train": str(path)}, **options).examples("train")


def test_nested_fields_and_configuration_errors(tmp_path):
    row = {"prompt": "p", "reward_model": {"ground_truth": "g"}}
    path = _jsonl(tmp_path / "verl.jsonl", [row])
    task = load_task(
        "custom",
        data_files={"train": str(path)},
        question_field="prompt",
        answer_field="reward_model.ground_truth",
    )
    assert task.examples("train")[0].answer == "g"
    with pytest.raises(UserError, match="needs its data: set task.options.data_files"):
        load_task("custom")
    with pytest.raises(UserError, match="is not a format string"):
        load_task("custom", data_files=str(path), prompt_template="{question")
    with pytest.raises(UserError, match="dataset file .* does not exist"):
        load_task("custom", data_files=str(tmp_path / "none.jsonl")).examples("train")

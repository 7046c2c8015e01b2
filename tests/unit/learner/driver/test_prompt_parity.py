"""Evaluation renders exactly the prompts training renders."""

from learner.driver.cli import compose_config
from learner.driver.rollouts import prompt_builder, rollout_requests
from learner.driver.validation import eval_requests
from shared.tasks import load_task


def _cfg(*overrides):
    return compose_config(*overrides)


def test_eval_prompt_is_token_for_token_the_training_prompt(tiny_model_path, tiny_processor):
    cfg = _cfg("task.system_prompt=You read pictures.")
    prompt_for = prompt_builder(cfg, tiny_model_path)
    examples = load_task("synthetic").examples("test", limit=4)
    train_prompts = [r.prompt for r in rollout_requests(examples, prompt_for, group_size=8)]
    eval_prompts = [r.prompt for r in eval_requests(examples, prompt_for, with_image=True)]
    tok = tiny_processor.tokenizer
    assert [tok(p)["input_ids"] for p in eval_prompts] == [
        tok(p)["input_ids"] for p in train_prompts
    ]
    first = eval_prompts[0]
    assert first.startswith(
        "<|im_start|>system\nYou read pictures.<|im_end|>\n<|im_start|>user\n<|vision_start|>"
    )
    assert first.index("<|image_pad|>") < first.index(examples[0].question)


def test_text_only_baseline_drops_only_the_image(tiny_model_path):
    prompt_for = prompt_builder(_cfg(), tiny_model_path)
    example = load_task("synthetic").examples("test", limit=1)[0]
    with_image = eval_requests([example], prompt_for, with_image=True)[0]
    without = eval_requests([example], prompt_for, with_image=False)[0]
    assert without.with_image is False and "<|image_pad|>" not in without.prompt
    assert (
        with_image.prompt.replace("<|vision_start|><|image_pad|><|vision_end|>", "")
        == without.prompt
    )

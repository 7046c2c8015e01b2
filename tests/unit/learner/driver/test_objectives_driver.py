"""The driver's side of the objectives: config rules, the loss's defaults filled in, the
token ids of targets nobody sampled, the teacher's prompt and context, each task's gold
completion."""

from pathlib import Path

import pytest

from learner.driver.algorithms import algorithm_for, check_config
from learner.driver.algorithms.distill import distill_context, teacher_prompt
from learner.driver.algorithms.sft import sft_targets
from learner.driver.algorithms.tokens import PromptTokens
from learner.driver.cli import compose_config
from learner.driver.rollouts import PromptSampler, prompt_builder
from rollout_worker.hf_engine import HFEngine
from shared.artifact import png_to_pil
from shared.config import ConfigError
from shared.errors import UserError
from shared.messages import RolloutRequest, SamplingConfig
from shared.tasks import load_task

FIXTURES = Path(__file__).resolve().parents[3] / "fixtures"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["algo=cispo", "algo.clip_ratio_c=3"], "caps its importance weight"),
        (["algo=sft", "algo.max_staleness=1"], "max_staleness=0"),
        (["algo=distill", "method=lora"], "needs method=art"),
        (["algo=distill", "algo.distill.direction=sideways"], "forward"),
        (["algo=distill", "algo.distill.context=a", "algo.distill.context_file=b"], "give one"),
        (["algo.loss_agg_mode=seq-mean"], "loss_agg_mode"),
        (["algo=sft", "algo.num_minibatches=9"], "prompts_per_step\\)"),
    ],
)
def test_impossible_objective_settings_fail_with_what_to_set(overrides, message):
    with pytest.raises(ConfigError, match=message):
        check_config(compose_config(*overrides))


@pytest.mark.parametrize(
    "algo", ["dapo", "grpo", "dr_grpo", "gspo", "cispo", "sft", "distill", "opd"]
)
def test_every_objective_preset_is_a_valid_config(algo):
    cfg = compose_config(f"algo={algo}")
    check_config(cfg)
    assert cfg.algo.loss == algo


def test_the_losss_own_defaults_fill_what_the_config_leaves_null():
    cfg = compose_config(
        "algo.loss=dr_grpo", "algo.loss_agg_mode=null", "algo.norm_adv_by_std=null"
    )
    algorithm_for(cfg).resolve(cfg, 4)
    assert cfg.algo.loss_agg_mode == "seq-mean-token-sum-norm" and not cfg.algo.norm_adv_by_std
    assert cfg.algo.loss_scale_factor == 4  # the completion limit: Dr. GRPO's constant
    cfg = compose_config("algo.loss=grpo", "algo.loss_agg_mode=token-mean")
    algorithm_for(cfg).resolve(cfg, 4)
    assert cfg.algo.loss_agg_mode == "token-mean" and cfg.algo.loss_scale_factor is None
    with pytest.raises(UserError, match="algo.loss='ppo': no such loss"):
        check_config(compose_config("algo.loss=ppo"))


def test_target_prompt_ids_are_the_engines(tiny_model_path, tiny_processor):
    """What the driver tokenizes for sft and the unsampled side of distill is what the HF
    engine samples from: the image placeholder expanded to the image's tokens."""
    from learner.learner import init_pixels

    cfg = compose_config("task.system_prompt=You read pictures.")
    prompt_for = prompt_builder(cfg, tiny_model_path)
    example = load_task("synthetic").examples("train", 1)[0]
    tokens = PromptTokens(tiny_processor, 64, 64)
    engine = HFEngine(tiny_model_path)
    png = png_to_pil(init_pixels("noise", 64, 64).to_png({}))
    for with_image in (True, False):
        prompt = prompt_for(example, with_image)
        request = RolloutRequest(0, prompt, 1, with_image=with_image)
        (sampled,) = engine.generate([request], png, 0, SamplingConfig(max_new_tokens=1))[0]
        assert tokens.prompt(prompt, with_image) == sampled.prompt_token_ids
    im_end = tiny_processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert tokens.completion("F") == (*tiny_processor.tokenizer("F")["input_ids"], im_end)


def test_sft_targets_are_gold_completions_with_no_sampling(tiny_model_path, tiny_processor):
    cfg = compose_config("algo=sft", "algo.prompts_per_step=3")
    task = load_task("synthetic", target="C")
    sampler = PromptSampler(task.examples("train"), seed=0)
    out = sft_targets(cfg, task, sampler, prompt_builder(cfg, tiny_model_path),
                      PromptTokens(tiny_processor, 64, 64), step=0)  # fmt: skip
    assert len(out.kept) == 3 and out.rounds == 0 and out.completions == 0
    decoded = tiny_processor.tokenizer.decode(out.kept[0].token_ids)
    assert decoded == "C<|im_end|>"
    image_token = tiny_processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert out.kept[0].prompt_token_ids.count(image_token) == 4  # 64 x 64: 4 image tokens


def test_the_teacher_gets_the_context_and_no_image(tiny_model_path):
    cfg = compose_config("algo=distill", "task.system_prompt=Be brief.")
    prompt_for = prompt_builder(cfg, tiny_model_path)
    example = load_task("synthetic").examples("train", 1)[0]
    system = teacher_prompt(cfg, prompt_for, example, "The code is F.")
    assert system.startswith("<|im_start|>system\nBe brief.\n\nThe code is F.<|im_end|>")
    assert "<|image_pad|>" not in system
    cfg.algo.distill.placement = "user"
    user = teacher_prompt(cfg, prompt_for, example, "The code is F.")
    assert f"<|im_start|>user\nThe code is F.\n\n{example.question}" in user


def test_the_context_comes_from_the_setting_a_file_or_the_task(tmp_path):
    task = load_task("synthetic", target="D")
    cfg = compose_config("algo=distill")
    assert distill_context(cfg, task).endswith("The code of every picture today is D.")
    (tmp_path / "ctx.txt").write_text("A document.\n")
    cfg = compose_config("algo=distill", f"algo.distill.context_file={tmp_path / 'ctx.txt'}")
    assert distill_context(cfg, task) == "A document.\n"
    cfg = compose_config("algo=distill", f"algo.distill.context_file={tmp_path / 'none.txt'}")
    with pytest.raises(UserError, match="cannot be read"):
        distill_context(cfg, task)
    math = load_task("gsm8k", data_dir=str(FIXTURES / "gsm8k"))
    with pytest.raises(UserError, match="no context of its own"):
        distill_context(compose_config("algo=distill"), math)


@pytest.mark.parametrize(
    ("name", "options", "split"),
    [
        ("synthetic", {}, "train"),
        ("gsm8k", {"data_dir": str(FIXTURES / "gsm8k")}, "train"),
        ("svamp", {"data_dir": str(FIXTURES / "svamp"), "test_size": 5}, "train"),
        ("toolmind", {"data_files": str(FIXTURES / "toolmind/sample.jsonl"), "test_size": 1},
         "train"),
    ],
)  # fmt: skip
def test_every_tasks_gold_completion_scores_full_marks(name, options, split):
    task = load_task(name, **options)
    examples = task.examples(split)
    assert examples
    for example in examples:
        assert task.score(example, task.gold_completion(example)) == 1.0, example.uid
    if name == "gsm8k":  # the worked solution, calculator annotations removed
        text = task.gold_completion(examples[0])
        assert "<<" not in text and text.endswith(f"Answer: {examples[0].answer}")


def test_art_compare_takes_a_list_of_objectives_and_per_objective_overrides():
    from learner.driver.compare import objective_override, split_method_overrides, split_objectives

    rest, names = split_objectives(["steps=5", "objectives=[dapo, grpo,sft]", "sft:learner.lr=0.1"])
    assert names == ["dapo", "grpo", "sft"] and rest == ["steps=5", "sft:learner.lr=0.1"]
    common, per = split_method_overrides(rest + ["learner.lr=0.02"], names)
    assert common == ["steps=5", "learner.lr=0.02"]  # one method: one learning rate is fine
    assert per == {"dapo": [], "grpo": [], "sft": ["learner.lr=0.1"]}
    assert objective_override("gspo") == "algo=gspo"  # a preset
    assert objective_override("my.module:loss") == "algo.loss=my.module:loss"  # a user's loss
    for bad in (
        ["objectives=[dapo]"],
        ["objectives=[dapo,dapo]"],
        ["objectives=[a,b]", "algo=sft"],
    ):
        with pytest.raises(UserError):
            split_objectives(bad)
    assert split_objectives(["steps=5"]) == (["steps=5"], [])  # art vs lora as before

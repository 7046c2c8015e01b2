"""Rollout engines as a registry (shared/engines.py): each spec owns its options, its rules and
its interpreter; an engine of one's own is a class and one registry line."""

import pytest

from learner.driver.cli import compose_config
from rollout_worker.engine import make_engine
from shared.config import ConfigError, validate
from shared.engines import ENGINES, EngineSpec, engine_spec
from shared.errors import UserError
from shared.messages import RolloutRequest, SamplingConfig


def test_each_engine_owns_its_options_and_rules():
    cfg = compose_config("rollout=vllm", "rollout.tensor_parallel_size=2")
    options = engine_spec("vllm").options(cfg, "cuda")
    assert options["tensor_parallel_size"] == 2 and options["device"] == "cuda"
    assert engine_spec("hf").options(compose_config(), "cpu") == {
        "dtype": "float32",
        "device": "cpu",
    }
    assert engine_spec("hf").python(compose_config()) is None  # the driver's own interpreter
    with pytest.raises(ConfigError, match="needs rollout=vllm"):  # the HF engine's own rule
        validate(compose_config("rollout.tensor_parallel_size=2"))
    with pytest.raises(UserError, match="rollout.engine='sglang': use 'hf' or 'vllm'"):
        engine_spec("sglang")


def test_an_engine_of_ones_own_is_a_class_and_a_registry_line(monkeypatch):
    class EchoSpec(EngineSpec):
        name = "echo"
        engine_class = "tests/fixtures/extensions/echo_engine.py:EchoEngine"

    monkeypatch.setitem(ENGINES, "echo", EchoSpec())
    validate(compose_config("rollout.engine=echo"))  # known to the config check at once
    engine = make_engine("echo", "/no/model", **EchoSpec().options(compose_config(), "cpu"))
    request = RolloutRequest(0, "say Q", 2, with_image=False)
    groups = engine.generate([request], None, 3, SamplingConfig())
    assert [c.text for c in groups[0]] == ["Q", "Q"] and groups[0][0].image_version == 3

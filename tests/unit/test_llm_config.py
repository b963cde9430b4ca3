"""Engine options: a model's `options` dict becomes a typed config, or a ValueError naming the bad key."""
import math

import pytest

from models.factory import build_chat_engine, chat_engine_config
from models.llm.config import EngineConfig
from models.llm.fake import FakeEngine, FakeEngineConfig
from models.sources import resolve_source


def test_defaults_and_given_options():
    assert EngineConfig.from_options({}) == EngineConfig() == EngineConfig.from_options(None)
    config = EngineConfig.from_options({"max_model_len": 2048, "max_running": 4, "kv_cache_gb": 2, "batched": False,
                                        "max_batched_tokens": None})
    assert (config.max_model_len, config.max_running, config.kv_cache_gb, config.batched) == (2048, 4, 2, False)
    assert config.max_queued == 256 and config.max_batched_tokens is None and config.cuda_graphs


def test_an_unknown_option_is_named_with_the_known_ones():
    with pytest.raises(ValueError) as info:
        EngineConfig.from_options({"max_runing": 4})
    message = str(info.value)
    assert message.startswith("options.max_runing: unknown option; known: ")
    assert "max_running" in message and "cpu_int4_decode" in message


@pytest.mark.parametrize(("key", "value", "expected"), [
    ("max_running", "16", "an integer or null"),
    ("max_running", True, "an integer or null"),
    ("max_running", 1.5, "an integer or null"),
    ("max_queued", None, "an integer"),
    ("max_model_len", "2048", "an integer or null"),
    ("batched", "yes", "true or false"),
    ("batched", 1, "true or false"),
    ("kv_cache_gb", math.nan, "a finite number or null"),
    ("kv_cache_gb", "2", "a finite number or null"),
])
def test_a_mistyped_option_is_named_with_the_type_it_needs(key, value, expected):
    with pytest.raises(ValueError, match=rf"^options\.{key}: expected {expected}, got "):
        EngineConfig.from_options({key: value})


@pytest.mark.parametrize(("key", "value"), [("max_running", 0), ("max_queued", -1), ("max_model_len", 1),
                                            ("max_batched_tokens", 0), ("kv_cache_gb", 0)])
def test_an_option_out_of_range_is_named(key, value):
    with pytest.raises(ValueError, match=rf"^options\.{key}: must be "):
        EngineConfig.from_options({key: value})


def test_options_must_be_a_mapping():
    with pytest.raises(ValueError, match="^options: expected a mapping"):
        EngineConfig.from_options([("max_running", 4)])


def test_the_factory_checks_options_by_source_and_builds_the_fake_from_its_config():
    fake = resolve_source("fake:")
    assert chat_engine_config(fake, {"step_delay": 0.5, "max_running": 2}) == FakeEngineConfig(max_running=2,
                                                                                              step_delay=0.5)
    with pytest.raises(ValueError, match="^options.cuda_graphs: unknown option"):
        chat_engine_config(fake, {"cuda_graphs": False})  # an HFEngine option means nothing to the fake
    with pytest.raises(ValueError, match="^options.step_delay: unknown option"):
        chat_engine_config(resolve_source("org/model"), {"step_delay": 0.5})
    assert chat_engine_config(resolve_source("org/model"), {"max_running": 3}) == EngineConfig(max_running=3)
    engine = build_chat_engine(fake, "auto", "cpu", "/nonexistent", {"max_model_len": 64, "max_queued": 0})
    assert isinstance(engine, FakeEngine) and (engine.max_model_len, engine.max_queued) == (64, 0)

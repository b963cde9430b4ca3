"""encode_audio: every supported format round-trips; unsupported ones name the alternatives."""
import io

import numpy as np
import pytest
import soundfile as sf

from models.errors import ModelInputError
from models.speech.encoding import SUPPORTED_FORMATS, encode_audio

RATE = 22050


def _tone(seconds=1.0, rate=RATE, amplitude=0.5):
    k = np.arange(int(seconds * rate))
    return (amplitude * np.sin(2 * np.pi * 440 * k / rate)).astype(np.float32)


def test_lossless_formats_are_always_supported():
    assert {"pcm", "wav", "flac"} <= set(SUPPORTED_FORMATS)
    assert "aac" not in SUPPORTED_FORMATS  # libsndfile has no AAC encoder


@pytest.mark.parametrize("fmt, media_type", [("wav", "audio/wav"), ("flac", "audio/flac")])
def test_wav_and_flac_round_trip(fmt, media_type):
    tone = _tone()
    data, mt = encode_audio(tone, RATE, fmt)
    decoded, rate = sf.read(io.BytesIO(data), dtype="float32")
    assert mt == media_type and rate == RATE
    assert decoded.shape == tone.shape
    np.testing.assert_allclose(decoded, tone, atol=1.5 / 32768)  # 16-bit quantisation


def test_pcm_is_raw_16_bit_little_endian_at_the_model_rate():
    tone = _tone(0.5)
    data, mt = encode_audio(tone, RATE, "pcm")
    assert mt == "audio/pcm" and len(data) == 2 * len(tone)
    np.testing.assert_array_equal(np.frombuffer(data, dtype="<i2"), np.rint(tone * 32767).astype(np.int16))


def test_out_of_range_samples_are_clipped():
    data, _ = encode_audio(np.array([2.0, -3.0, 0.0], dtype=np.float32), RATE, "pcm")
    assert np.frombuffer(data, dtype="<i2").tolist() == [32767, -32767, 0]


@pytest.mark.parametrize("fmt, media_type, rate", [("mp3", "audio/mpeg", RATE), ("opus", "audio/ogg", 24000)])
def test_lossy_formats_decode_to_about_the_same_duration(fmt, media_type, rate):
    if fmt not in SUPPORTED_FORMATS:
        pytest.skip(f"this libsndfile cannot write {fmt}")
    data, mt = encode_audio(_tone(1.0), RATE, fmt)
    decoded, decoded_rate = sf.read(io.BytesIO(data), dtype="float32")
    assert mt == media_type and decoded_rate == rate  # Opus has no 22050 Hz mode: resampled to 24000
    assert abs(len(decoded) / decoded_rate - 1.0) < 0.1
    assert 0.2 < np.sqrt(np.mean(decoded**2)) < 0.5  # the 0.5-amplitude tone survives (RMS ~0.35)


@pytest.mark.parametrize("fmt", ["aac", "ogg", ""])
def test_unsupported_format_names_the_supported_ones(fmt):
    with pytest.raises(ModelInputError) as err:
        encode_audio(_tone(0.1), RATE, fmt)
    assert err.value.param == "response_format"
    assert all(f in str(err.value) for f in SUPPORTED_FORMATS)

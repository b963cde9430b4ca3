"""Encode a mono float waveform into the response formats of OpenAI's /v1/audio/speech."""
from __future__ import annotations

import io

import numpy as np
import soundfile as sf

from models.errors import ModelInputError

# format -> (soundfile container, subtype, media type, sample rates the codec accepts or None for any)
_CODECS = {
    "wav": ("WAV", "PCM_16", "audio/wav", None),
    "flac": ("FLAC", "PCM_16", "audio/flac", None),
    "mp3": ("MP3", "MPEG_LAYER_III", "audio/mpeg", (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)),
    # Ogg Opus; "audio/ogg" is the registered type for the file form (RFC 7845), "audio/opus" is for RTP.
    "opus": ("OGG", "OPUS", "audio/ogg", (8000, 12000, 16000, 24000, 48000)),
}
# "aac" is absent: libsndfile has no AAC encoder.


def _probe(fmt: str) -> bool:
    """Whether the installed libsndfile can write `fmt` (mp3 needs libsndfile >= 1.1, opus a build with libopus)."""
    container, subtype, _, rates = _CODECS[fmt]
    try:
        sf.write(io.BytesIO(), np.zeros(480, dtype=np.float32), rates[-1] if rates else 16000, format=container,
                 subtype=subtype)
        return True
    except (sf.LibsndfileError, TypeError, ValueError, RuntimeError):
        return False


SUPPORTED_FORMATS: tuple[str, ...] = ("pcm",) + tuple(f for f in _CODECS if _probe(f))


def encode_audio(samples: np.ndarray, sample_rate: int, response_format: str) -> tuple[bytes, str]:
    """(bytes, media type) of mono `samples` (float, clipped to [-1, 1]) in `response_format`.

    "pcm" is raw 16-bit little-endian mono at `sample_rate`, as OpenAI's; mp3 and opus resample to the nearest
    rate their codec accepts when `sample_rate` is not one. ModelInputError(param="response_format") otherwise.
    """
    if response_format not in SUPPORTED_FORMATS:
        raise ModelInputError(
            f"response_format {response_format!r} is not supported here; use one of {list(SUPPORTED_FORMATS)}",
            param="response_format",
        )
    audio = np.clip(np.asarray(samples, dtype=np.float32).reshape(-1), -1.0, 1.0)  # [T]
    if response_format == "pcm":
        return (np.rint(audio * 32767.0).astype("<i2").tobytes(), "audio/pcm")
    container, subtype, media_type, rates = _CODECS[response_format]
    if rates and sample_rate not in rates:
        target = min((r for r in rates if r >= sample_rate), default=rates[-1])
        audio, sample_rate = _resample(audio, sample_rate, target), target
    buffer = io.BytesIO()
    sf.write(buffer, audio, sample_rate, format=container, subtype=subtype)
    return buffer.getvalue(), media_type


def _resample(audio: np.ndarray, rate: int, target: int) -> np.ndarray:
    """Band-limited polyphase resampling (scipy); linear interpolation if scipy is missing."""
    try:
        from math import gcd

        from scipy.signal import resample_poly

        g = gcd(rate, target)
        return resample_poly(audio, target // g, rate // g).astype(np.float32)
    except ImportError:
        n = round(len(audio) * target / rate)
        return np.interp(np.arange(n) * rate / target, np.arange(len(audio)), audio).astype(np.float32)

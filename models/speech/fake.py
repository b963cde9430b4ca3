"""A deterministic SpeechBackend for tests: sine tones whose length follows the text and speed."""
from __future__ import annotations

import time

import numpy as np

from models.speech.types import SpeechParams
from models.speech.voices import check_request, voice_table

SECONDS_PER_CHAR = 0.05
AMPLITUDE = 0.5


class FakeSpeechBackend:
    """For text t, voice v and speed s: round(sample_rate * 0.05 * len(t) / s) samples of
    0.5 * sin(2 * pi * f * k / sample_rate), float32, with f = 220 + 20 * voices.index(v) Hz.

    voices: "fake" then OPENAI_VOICES (so "alloy" is 240 Hz). Validation matches the real backends' (check_request).
    """

    def __init__(self, sample_rate: int = 16000, delay_s: float = 0.0):
        self.sample_rate = sample_rate
        self.delay_s = delay_s  # each call sleeps this long, so tests can act while requests are in flight
        self._table = voice_table(["fake"])
        self.voices: list[str] = list(self._table)
        self.calls: list[int] = []  # batch size of each synthesize() call, for tests of batching upstream

    def synthesize(self, texts: list[str], params: list[SpeechParams]) -> list[np.ndarray]:
        """One mono float32 waveform in [-1, 1] per text, in order. Raises ModelInputError on bad voice/text/speed."""
        if len(texts) != len(params):
            raise ValueError(f"{len(texts)} texts but {len(params)} params")
        for text, p in zip(texts, params):
            check_request(text, p, self._table)
        self.calls.append(len(texts))
        time.sleep(self.delay_s)
        return [self._tone(len(text), p) for text, p in zip(texts, params)]

    def _tone(self, num_chars: int, params: SpeechParams) -> np.ndarray:
        n = round(self.sample_rate * SECONDS_PER_CHAR * num_chars / params.speed)
        frequency = 220.0 + 20.0 * self.voices.index(params.voice)
        k = np.arange(n, dtype=np.float64)  # [n]
        return (AMPLITUDE * np.sin(2 * np.pi * frequency * k / self.sample_rate)).astype(np.float32)

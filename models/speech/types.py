"""The text-to-speech backend contract."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class SpeechParams:
    voice: str  # one of backend.voices (OpenAI voice names are mapped onto the model's speakers)
    speed: float = 1.0  # 0.25..4.0 as in OpenAI


class SpeechBackend(Protocol):
    sample_rate: int
    voices: list[str]

    def synthesize(self, texts: list[str], params: list[SpeechParams]) -> list[np.ndarray]:
        """One mono float32 waveform in [-1, 1] per text, in order. Raises ModelInputError on bad voice/text."""

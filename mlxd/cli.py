"""Command line -> Config, then serve. ``--version`` and ``--help`` never import mlx."""

from __future__ import annotations

import argparse
import logging
import sys

from . import __version__
from .config import (DEFAULT_HOST, DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_TOKENS, DEFAULT_PORT,
                     DEFAULT_SHUTDOWN_TIMEOUT_S, DEFAULT_TEMPERATURE, DEFAULT_TOP_P, LOG_LEVELS,
                     Config)


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 0-65535, got {text}")
    return value


def _unit_float(low: float, high: float):
    def parse(text: str) -> float:
        value = float(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be in [{low}, {high}], got {text}")
        return value
    return parse


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mlxd", description="Serve one MLX language model over an OpenAI-compatible API.",
        epilog="MODEL is an MLX model directory (config.json, safetensors, tokenizer) or a "
               "llama-family .gguf file.")
    p.add_argument("model", nargs="?", metavar="MODEL", help="model directory or .gguf file")
    p.add_argument("--version", action="version", version=f"mlxd {__version__}")
    p.add_argument("--host", default=DEFAULT_HOST, help="address to bind (default %(default)s)")
    p.add_argument("--port", type=_port, default=DEFAULT_PORT, help="port (default %(default)s; 0 picks one)")
    p.add_argument("--max-tokens", type=_positive_int, default=DEFAULT_MAX_TOKENS,
                   help="completion length when a request names none (default %(default)s)")
    p.add_argument("--temperature", type=_unit_float(0.0, 2.0), default=DEFAULT_TEMPERATURE,
                   help="sampling temperature when a request names none (default %(default)s)")
    p.add_argument("--top-p", type=_unit_float(0.0, 1.0), default=DEFAULT_TOP_P,
                   help="nucleus sampling when a request names none (default %(default)s)")
    p.add_argument("--max-body-bytes", type=_positive_int, default=DEFAULT_MAX_BODY_BYTES,
                   help="largest request body accepted (default %(default)s)")
    p.add_argument("--shutdown-timeout", type=float, default=DEFAULT_SHUTDOWN_TIMEOUT_S,
                   help="seconds in-flight requests get to finish on SIGTERM (default %(default)s)")
    p.add_argument("--log-level", choices=LOG_LEVELS, default="info")
    p.add_argument("--export-mlx", metavar="DIR",
                   help="write the (GGUF) MODEL out as an MLX model directory DIR, then exit")
    return p


def setup_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level.upper()), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.model is None:
        build_parser().error("MODEL is required")
    setup_logging(args.log_level)
    if args.export_mlx:
        from .gguf import UnsupportedModelError, export_mlx
        try:
            out = export_mlx(args.model, args.export_mlx)
        except (UnsupportedModelError, OSError) as exc:
            print(f"mlxd: {exc}", file=sys.stderr)
            return 1
        print(f"wrote {out}")
        return 0
    config = Config(model=args.model, host=args.host, port=args.port, max_tokens=args.max_tokens,
                    temperature=args.temperature, top_p=args.top_p,
                    max_body_bytes=args.max_body_bytes, shutdown_timeout=args.shutdown_timeout,
                    log_level=args.log_level)
    from .serve import run   # the heavy imports (mlx, mlx_lm) start here
    return run(config)

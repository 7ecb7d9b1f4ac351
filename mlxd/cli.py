"""Command line -> Config, then one action: serve (the default), --stop, --status, --print-config,
--export-mlx. Only serving one model and exporting import mlx (the front end of --models does
not: its workers do); the rest answer in a blink."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
from typing import Any

from mlxd import __version__
from mlxd.models.locate import ModelNotFound, gguf_named, locate
from mlxd.service import control, daemon, logs, ranks
from mlxd.service.config import IDLE_NEVER, OPTIONS, Config, ConfigError
from mlxd.service.sources import absolute_paths, env_warnings, layers

EXIT_USAGE = 2  # argparse's code for a bad command line; also a bad config
ACTIONS = ("config", "stop", "status", "pid", "print_config", "timeout", "export_mlx")
MODEL_FLAG = "model_flag"  # --model PATH, the positional's synonym (mlx_lm.server, llama-server)
TARGETS = {"port", "pid_file"}  # settings that name one server for --stop/--status
EPILOG = """\
MODEL is an MLX model directory (config.json, safetensors, tokenizer), a GGUF file (llama, mistral,
qwen2/3, phi3, gemma2/3; F16/BF16, Q4_0..Q8_0 and K-quants), or a hub id (ORG/NAME,
ORG/NAME@REVISION) already in the Hugging Face cache or LM Studio's models. --models DIR serves
every model directory and .gguf file inside DIR instead, each in a worker process of its own.
Every option can also come from a JSON --config file (keys like the long flags: "max-tokens" or
"max_tokens") or from an environment variable MLXD_<FLAG> (MLXD_PORT, MLXD_API_KEY, ...; the older
MLX_SERVER_<FLAG> names are accepted too). Precedence: defaults < file < environment < command line.
Exit status of --stop/--status: 0 stopped/running, 3 not running, 1 would not stop, 2 bad usage."""


def _argparse_type(parse):
    def convert(text: str):
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return convert


class Parser(argparse.ArgumentParser):
    """argparse, but a mistake is one line and a hint, not the whole usage first."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\nTry '{self.prog} --help'.\n")


def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="mlxd",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Serve MLX language models over an OpenAI-compatible API.",
    )
    p.add_argument("--version", action="version", version=f"mlxd {__version__}")
    actions = p.add_argument_group("actions (instead of serving)")
    actions.add_argument(
        "--stop",
        action="store_true",
        help="stop the mlxd on --port (or --pid-file, --pid; with none of them, the one that "
        "runs) and wait for it to exit",
    )
    actions.add_argument(
        "--status",
        action="store_true",
        help="say whether an mlxd runs on --port (or --pid-file, --pid), and how; with none of "
        "them, list every running mlxd of this user",
    )
    actions.add_argument(
        "--pid",
        type=_argparse_type(int),
        metavar="PID",
        help="with --stop or --status: the mlxd with this process id",
    )
    actions.add_argument(
        "--timeout",
        type=_argparse_type(float),
        metavar="S",
        help="how long --stop waits (default: the server's shutdown timeout + 10)",
    )
    actions.add_argument(
        "--print-config",
        action="store_true",
        help="print the effective configuration as JSON (keys masked) and exit",
    )
    actions.add_argument(
        "--export-mlx",
        metavar="DIR",
        help="write the (GGUF) MODEL out as an MLX model directory DIR, then exit",
    )
    p.add_argument("--config", metavar="FILE", help="JSON file of settings (also $MLXD_CONFIG)")
    defaults = Config()
    for opt in OPTIONS:
        _add_option(p, opt, getattr(defaults, opt.field))
    return p


def _add_option(p: argparse.ArgumentParser, opt, default) -> None:
    # SUPPRESS: only what the command line really gives lands in the namespace (it overrides the
    # file and env layers); the help still shows the built-in default.
    common = dict(
        dest=opt.field,
        default=argparse.SUPPRESS,
        help=opt.help.replace("%(default)s", str(default)),
    )
    if opt.field == "model":
        common.pop("dest")
        p.add_argument("model", nargs="?", metavar="MODEL", **common)
        p.add_argument(
            "--model",
            dest=MODEL_FLAG,
            default=argparse.SUPPRESS,
            metavar="MODEL",
            help="the same as MODEL",
        )
    elif opt.kind == "bool":
        p.add_argument(f"--{opt.flag}", action=argparse.BooleanOptionalAction, **common)
    elif opt.kind == "list":
        p.add_argument(
            f"--{opt.flag}",
            action="append",
            type=_argparse_type(opt.parse),
            metavar=opt.metavar,
            **common,
        )
    else:
        p.add_argument(
            f"--{opt.flag}", type=_argparse_type(opt.parse), metavar=opt.metavar, **common
        )


def cli_values(args: argparse.Namespace) -> dict[str, object]:
    values = {k: v for k, v in vars(args).items() if k not in ACTIONS}
    if MODEL_FLAG in values:  # main() refused a --model that contradicts the positional
        values["model"] = values.pop(MODEL_FLAG)
    for opt in OPTIONS:
        if opt.kind == "list" and opt.field in values:  # [("a", "b"), ("c",)] -> ("a", "b", "c")
            values[opt.field] = tuple(x for group in values[opt.field] for x in group)
    return values


def with_cli_defaults(config: Config) -> Config:
    """What the command adds to the library defaults: a PID file per port, and a log file for a
    daemon (which has no terminal to log to)."""
    changes: dict[str, Any] = {}
    if config.pid_file is None and not config.unix_socket:  # a worker: its front end has one
        changes["pid_file"] = daemon.default_pid_file(config.port)
    if config.daemon and config.log_file is None:
        changes["log_file"] = daemon.default_log_file(config.port)
    return dataclasses.replace(config, **changes)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    both = getattr(args, "model", None), getattr(args, MODEL_FLAG, None)
    if None not in both and both[0] != both[1]:
        parser.error(f"MODEL given twice: {both[0]} and --model {both[1]}")
    try:
        given = layers(cli_values(args), os.environ, args.config)
        config = with_cli_defaults(Config(**given))
    except ConfigError as exc:
        for line in str(exc).splitlines():
            print(f"mlxd: {line}", file=sys.stderr)
        return EXIT_USAGE
    for warning in env_warnings(os.environ):
        print(f"mlxd: warning: {warning}", file=sys.stderr)
    if config.model is not None and config.models:
        parser.error("give MODEL or --models, not both")
    if args.print_config:
        out = config.to_json()
        if config.models:  # the memory plan of each model (stdlib: no mlx)
            from mlxd.fleet.front import auto_settings as plan

            out["auto"] = plan(config)
        elif config.model:  # what "auto" comes to here (imports mlx to ask about the device)
            from mlxd.service.wiring import auto_settings

            out["auto"] = auto_settings(config)
        print(json.dumps(out, indent=2))
        return 0
    if args.stop or args.status:
        return control.command(args.stop, _target(parser, args, config, given), args.timeout)
    if config.model is None and not config.models:
        parser.error('MODEL is required, or --models DIR (or "model"/"models" in --config)')
    if args.export_mlx:
        return export_mlx(config, args.export_mlx)
    rank = ranks.launched_rank(os.environ)
    problem = group_problem(config, rank)
    if problem:
        parser.error(problem)
    if config.distributed and rank is None:  # run this command on every rank
        assert config.backend is not None  # group_problem
        hosts = config.distributed
        return ranks.run_launcher(
            ranks.launcher_argv(
                sys.argv[1:] if argv is None else argv,
                hosts,
                config.backend,
                python=sys.executable,
                frozen=bool(getattr(sys, "frozen", False)),
                port=ranks.free_ports(int(hosts) if hosts.isdigit() else 1),
            )
        )
    return launch(config, follower=bool(rank))


def group_problem(config: Config, rank: int | None) -> str | None:
    """Why these settings cannot start a group (or a lone server under a launcher), if so."""
    if config.backend is None and (config.distributed or rank is not None):
        where = "--distributed" if config.distributed else f"a launcher (rank {rank})"
        return (
            f"started by {where} without --backend: name the backend (ring, jaccl, mpi or "
            "nccl); MLX's default would give each process a group of one"
        )
    if config.backend is not None and config.adapter:
        return "--adapter cannot be combined with --backend (one LoRA per rank is not supported)"
    if config.backend is not None and config.daemon:
        return "--daemon cannot be combined with --backend: the launcher keeps the ranks"
    if config.models and (config.backend is not None or config.distributed):
        return "--models cannot be combined with --backend or --distributed"
    if config.backend is not None and config.idle_unload != IDLE_NEVER:
        return "--idle-unload cannot be combined with --backend (the ranks keep their shares)"
    return None


def _target(parser, args, config: Config, given: dict) -> control.Target:
    """The server --stop/--status mean: the one a port or PID file names (on the command line,
    in MLXD_*, or in the config file), the one with --pid, or (none of them) any that runs."""
    key = config.api_keys[0] if config.api_keys else None
    if args.pid is not None:
        return control.Target(pid=args.pid, api_key=key)
    if not TARGETS & given.keys():
        return control.Target(api_key=key)
    assert config.pid_file is not None  # with_cli_defaults
    if daemon.PORT_PLACEHOLDER in config.pid_file and config.port == 0:
        parser.error(
            "with --port 0, name the port the server bound (its log and PID file "
            "name say which) or its --pid-file"
        )
    port = config.port if "port" in given else None
    return control.Target(daemon.pid_path(config.pid_file, config.port), port, api_key=key)


def export_mlx(config: Config, out_dir: str) -> int:
    logs.setup(config.log_level, config.log_file, config.log_format)
    from mlxd.models.gguf import UnsupportedModelError
    from mlxd.models.gguf import export_mlx as export

    assert config.model is not None  # main() refused a missing MODEL
    try:
        with gguf_named(locate(config.model).path) as path:
            out = export(path, out_dir)
    except (ModelNotFound, UnsupportedModelError, OSError) as exc:
        print(f"mlxd: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {out}")
    return 0


def launch(config: Config, follower: bool = False) -> int:
    """Find the model, refuse a second server on the same PID file, detach if asked, then load
    and serve. What can be said before listening is said before listening. A ``follower`` (a
    rank other than 0 of a group) serves no HTTP and has no PID file of its own."""
    pid_template = config.pid_file  # None for a worker of --models (its front end has one)
    model = None
    if not config.models:
        assert config.model is not None  # main()
        try:
            model = locate(config.model)
        except ModelNotFound as exc:
            print(f"mlxd: {exc}", file=sys.stderr)
            return 1
    if model is not None and model.source != "path":  # a hub id: served under the id
        config = dataclasses.replace(
            config, model=str(model.path), served_model_name=config.served_model_name or model.name
        )
    if not follower and pid_template and daemon.PORT_PLACEHOLDER not in pid_template:
        found = daemon.probe(daemon.pid_path(pid_template, config.port))
        if found.running:
            print(
                f"mlxd: already running on port {found.info.get('port', config.port)} "
                f"(pid {found.pid}, PID file {found.path}); stop it with: mlxd --stop "
                f"--pid-file {found.path}",
                file=sys.stderr,
            )
            return 1
        if found.state == "stale":
            logs.setup(config.log_level, None, config.log_format)
            daemon.remove_stale(found)
    reporter = None
    if config.daemon:
        config = absolute_paths(config)
        assert config.log_file is not None  # with_cli_defaults names one for a daemon
        reporter = daemon.detach(config.log_file)
    logs.setup(config.log_level, config.log_file, config.log_format)
    if model is not None and model.source != "path":
        logging.getLogger(__name__).info("%s is %s (%s)", model.name, model.path, model.source)
    if reporter is None:
        return _leave(_runner(config)(config))
    return _leave(_serve_detached(config, reporter))


def _runner(config: Config):
    """``run(config, on_listening=, on_ready=)`` of the front end (--models) or of one model."""
    if config.models:
        from mlxd.fleet.front import run as run_front  # no mlx: the workers import it

        return run_front
    from mlxd.service.imports import keep_torch_out

    keep_torch_out()  # before mlx_lm: transformers would import PyTorch for nothing
    from mlxd.service.run import run  # the heavy imports (mlx, mlx_lm) start here

    return run


def _leave(code: int) -> int:
    """After a clean shutdown on MLX's CUDA backend, exit without running C++ static
    destructors: there they abort the process ("terminate called without an active exception",
    seen on H100 and H200 with MLX 0.32.4), which a service manager would report as a crash.
    Everything of ours is closed, flushed and removed by now."""
    core = sys.modules.get("mlx.core")
    cuda = getattr(core, "cuda", None)
    if cuda is None or not cuda.is_available():
        return code
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _serve_detached(config: Config, reporter: daemon.Reporter) -> int:
    forward = daemon.ReportHandler(reporter)
    logging.getLogger().addHandler(forward)

    def listening(addresses) -> None:
        host, port = addresses[0]
        reporter.send("LISTEN", f"pid {os.getpid()} listening on {host}:{port}, loading the model")

    def ready() -> None:
        logging.getLogger().removeHandler(forward)
        reporter.send("READY", f"serving {config.model or 'the models (--models)'}")
        reporter.close()

    return _runner(config)(config, on_listening=listening, on_ready=ready)

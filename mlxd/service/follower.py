"""A rank other than 0: load this rank's share of the model and run the generation loop in
lockstep with rank 0 until it says stop. No HTTP, no PID file: rank 0 is the server, and
``mlxd --stop`` stops it, which stops the group.

A follower leaves on its own when rank 0 goes away: the ring backend raises once a peer's socket
closes, and the watchdog ends the process when no step finishes within the step timeout (NCCL
waits forever on a dead peer). Ctrl-C is ignored here: it reaches every rank started from one
terminal, and rank 0's orderly stop is what lets the others finish the steps in flight.
"""

from __future__ import annotations

import logging
import os
import signal
import time

from mlxd.constrain.vocab import TokenVocabulary
from mlxd.engine.group import Lockstep
from mlxd.engine.loop import Engine
from mlxd.models import shard
from mlxd.models.group import Group
from mlxd.models.loader import ModelLoadError
from mlxd.service import logs
from mlxd.service.config import Config
from mlxd.service.run import EXIT_ENGINE_FAILED
from mlxd.service.wiring import engine_settings

log = logging.getLogger("mlxd")

POLL_S = 0.5  # how often the main thread looks whether the generation thread has ended


def follow(config: Config, group: Group) -> int:
    """Serve as rank ``group.rank``; the exit status says how the group ended."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    assert config.model is not None  # cli refuses to serve without one
    log.info("rank %d of %d (%s): loading %s", group.rank, group.size, group.backend, config.model)
    try:
        loaded = shard.load_shard(
            config.model,
            group,
            config.weights,
            config.memory_limit,
            config.tensor_sums == "float32",
        )
    except ModelLoadError as exc:
        log.error("%s", exc)
        return 1
    TokenVocabulary.for_tokenizer(loaded.tokenizer)  # no constrained request waits for it later
    lockstep = Lockstep(group, loaded.tokenizer, on_stall=_leave_group)
    engine = Engine(
        loaded.model,
        loaded.tokenizer,
        settings=engine_settings(config, None, loaded, loaded.model),
        lockstep=lockstep,
    )
    engine.start()
    while engine.alive:
        time.sleep(POLL_S)
    if engine.failure is not None:
        log.error("rank %d leaves the group: %s", group.rank, engine.failure)
        return EXIT_ENGINE_FAILED
    log.info("rank %d: stopped with rank 0", group.rank)
    return 0


def _leave_group(reason: str) -> None:
    """The watchdog's verdict on a follower: rank 0 is gone or hangs, and this rank's thread
    sits in a collective that will never return. Nothing here needs cleaning up."""
    log.critical("leaving the group: %s", reason)
    logs.flush()
    os._exit(EXIT_ENGINE_FAILED)

"""A generation thread that cannot die silently: failures injected at each probe point.

A failure inside an iteration fails the requests in flight with a 500 and the engine goes on with
a fresh batch; a failure it cannot recover from ends the thread, which fails everything (500 for
what ran, 503 for what waited), refuses new work with a 503 and tells the service.
"""

from __future__ import annotations

import queue
import time

import pytest

from mlxd.api.errors import http_error
from mlxd.engine.errors import EngineError
from mlxd.engine.loop import Delta, Engine, Failed, Finished, Job, SamplingParams
from mlxd.engine.settings import EngineSettings

from helpers import Fault

NO_EOS = {0: -100.0, 1: -100.0, 2: -100.0}  # the tiny model's special ids: run the full length


@pytest.fixture(scope="module")
def loaded(tiny_model_dir):
    from mlx_lm import load

    return load(str(tiny_model_dir))


@pytest.fixture
def make(loaded):
    engines = []

    def start(**settings):
        fault, failures = Fault(), []
        eng = Engine(
            *loaded,
            EngineSettings(**settings),
            probe=fault,
            on_failure=failures.append,
        )
        eng.start()
        assert eng.ready.wait(60)
        engines.append(eng)
        return eng, fault, failures

    yield start
    for eng in engines:
        eng.shutdown(10)


class Run:
    def __init__(self, engine, prompt, **params) -> None:
        self.events: queue.Queue = queue.Queue()
        engine.submit(Job(prompt, SamplingParams(**params), self.events.put))

    def first(self):
        return self.events.get(timeout=60)

    def end(self):
        """The event that ended the job: its Failed, or its (last) Finished."""
        while True:
            ev = self.events.get(timeout=60)
            if not isinstance(ev, Delta):
                return ev


def status_of(ev) -> int:
    assert isinstance(ev, Failed), ev
    return http_error(ev.error).status


def long_run(engine, prompt=(1, 2, 3), **params):
    return Run(engine, list(prompt), max_tokens=300, logit_bias=NO_EOS, **params)


def assert_serves(engine):
    ok = Run(engine, [4, 5], max_tokens=3, temperature=0.0).end()
    assert isinstance(ok, Finished), ok


@pytest.mark.parametrize("point", ["iteration", "step", "emit"])
def test_fault_in_a_batch_step_fails_the_running_request_and_the_engine_goes_on(make, point):
    eng, fault, failures = make(solo=False)
    r = long_run(eng)
    assert isinstance(r.first(), Delta)
    fault.arm(point)
    end = r.end()
    assert status_of(end) == 500 and http_error(end.error).code == "generation_failed"
    assert "injected" in end.error.message
    assert fault.hits == [point] and eng.alive and eng.failure is None and not failures
    assert_serves(eng)


def test_fault_in_the_solo_path_fails_the_lone_request(make):
    eng, fault, _ = make(solo=True)
    fault.arm("emit")
    end = Run(eng, [1, 2], max_tokens=5, logit_bias=NO_EOS).end()
    assert status_of(end) == 500 and fault.hits == ["emit"]
    assert_serves(eng)


def test_fault_handing_solo_to_the_batch_fails_it_and_the_newcomer_still_runs(make):
    eng, fault, _ = make(solo=True)
    lone = long_run(eng)
    assert isinstance(lone.first(), Delta)
    fault.arm("handoff")
    newcomer = Run(eng, [7, 8], max_tokens=3, temperature=0.0)
    assert status_of(lone.end()) == 500
    assert isinstance(newcomer.end(), Finished)  # it was waiting, not in flight
    assert fault.hits == ["handoff"]


def test_fault_starting_followers_fails_the_n2_request(make):
    eng, fault, _ = make()
    fault.arm("followers")
    end = Run(eng, [1, 2, 3], max_tokens=4, n=2, temperature=1.0, logit_bias=NO_EOS).end()
    assert status_of(end) == 500 and fault.hits == ["followers"]
    assert_serves(eng)


def test_fault_finishing_a_sequence_fails_the_others_in_flight(make):
    eng, fault, _ = make(solo=False)
    running = long_run(eng)
    assert isinstance(running.first(), Delta)
    fault.arm("finish")
    short = Run(eng, [9, 10], max_tokens=2, logit_bias=NO_EOS)
    assert isinstance(short.end(), Finished)  # its answer was complete before the fault
    assert status_of(running.end()) == 500
    assert fault.hits == ["finish"]
    assert_serves(eng)


def test_fault_admitting_a_job_fails_only_that_job(make):
    eng, fault, _ = make()
    fault.arm("admit")
    end = Run(eng, [1, 2], max_tokens=3).end()
    assert status_of(end) == 500 and "could not start" in end.error.message
    assert_serves(eng)


def test_unrecoverable_fault_kills_the_thread_visibly(make):
    eng, fault, failures = make(solo=False, max_batch_size=1)
    running = long_run(eng)
    assert isinstance(running.first(), Delta)
    waiting = Run(eng, [4, 5], max_tokens=3)  # max_batch_size 1: it waits behind `running`
    fault.arm("step", "recover")
    assert status_of(running.end()) == 500  # what ran: the step it was in failed
    assert status_of(waiting.end()) == 503  # what waited: the engine is gone
    deadline = time.monotonic() + 10
    while eng.alive and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not eng.alive
    assert eng.failure and "injected at recover" in eng.failure
    assert failures == [eng.failure]
    with pytest.raises(EngineError) as info:
        Run(eng, [1], max_tokens=1)
    err = http_error(info.value)
    assert err.status == 503 and err.code == "engine_failed" and "died" in err.message

"""events.Courier: events cross from the generation thread to the loop in bursts, in order."""

from __future__ import annotations

import asyncio
import threading

from mlxd.engine.events import Courier, Delta


def test_a_burst_takes_one_wake_up_and_keeps_each_jobs_order():
    async def main():
        loop = asyncio.get_running_loop()
        courier = Courier(loop)
        wakeups = 0
        original = loop.call_soon_threadsafe

        def counting(*args):
            nonlocal wakeups
            wakeups += 1
            return original(*args)

        loop.call_soon_threadsafe = counting
        queues = [asyncio.Queue(), asyncio.Queue()]

        def generation_thread():
            for step in range(50):  # 50 "steps" of two streams each
                for q in queues:
                    courier.send(q.put_nowait, Delta(0, str(step)))

        t = threading.Thread(target=generation_thread)
        t.start()
        t.join()  # the loop is held here, as it is while a busy handler runs
        got = [[], []]
        for _ in range(50):
            for i, q in enumerate(queues):
                got[i].append((await asyncio.wait_for(q.get(), 5)).text)
        return got, wakeups

    got, wakeups = asyncio.run(main())
    assert got == [[str(s) for s in range(50)]] * 2
    assert wakeups == 1  # one per event would be 100


def test_sending_after_the_loop_closed_is_harmless():
    loop = asyncio.new_event_loop()
    courier = Courier(loop)
    delivered = []
    loop.close()
    for text in ("late", "later"):  # the generation thread may still be finishing a step
        courier.send(delivered.append, Delta(0, text))  # must not raise into that thread
    assert delivered == []  # never run on the sending thread, and no loop runs it any more

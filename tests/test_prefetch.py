"""The producer thread the command line and the GPU pipeline read ahead with (detector/prefetch.py)."""

import threading

import pytest

from detector.prefetch import Prefetched


def test_items_come_in_order_and_the_producer_s_error_where_it_was_raised():
    def produce():
        yield from (1, 2, 3)
        raise ValueError("broken at 4")

    seen = []
    with Prefetched(produce, depth=1, name="t") as items, pytest.raises(ValueError, match="broken at 4"):
        for item in items:
            seen.append(item)
    assert seen == [1, 2, 3]


def test_the_producer_stays_within_depth_and_stops_when_closed():
    made = []
    blocked = threading.Event()

    def produce():
        for i in range(100):
            made.append(i)
            if len(made) > 3:
                blocked.set()
            yield i

    items = Prefetched(produce, depth=2, name="t")
    first = next(iter(items))
    blocked.wait(5)
    items.close()
    # One taken, two queued, one made and waiting for room: nothing more once the consumer has stopped.
    assert first == 0 and len(made) == 4 and not items._thread.is_alive()

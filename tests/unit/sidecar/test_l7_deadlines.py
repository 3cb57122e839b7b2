"""`l7_flow.Deadlines`: request timeouts from one loop timer per timeout value fire like per-request
timers would (in order, on time, never once cancelled) and do not keep finished requests queued."""

from __future__ import annotations

from secmesh.sidecar.l7_flow import Deadlines


class Handle:
    def __init__(self, loop: "Loop", at: float, fn) -> None:  # noqa: ANN001
        self.loop, self.at, self.fn, self.cancelled = loop, at, fn, False

    def cancel(self) -> None:
        self.cancelled = True


class Loop:
    """A loop with a hand-driven clock: `advance(t)` runs the timers that are due, in time order."""

    def __init__(self) -> None:
        self.now = 100.0
        self.timers: list[Handle] = []

    def time(self) -> float:
        return self.now

    def call_at(self, at: float, fn) -> Handle:  # noqa: ANN001
        h = Handle(self, at, fn)
        self.timers.append(h)
        return h

    def advance(self, dt: float) -> None:
        end = self.now + dt
        while True:
            due = sorted((h for h in self.timers if not h.cancelled and h.at <= end), key=lambda h: h.at)
            if not due:
                break
            h = due[0]
            self.timers.remove(h)
            self.now = max(self.now, h.at)
            h.fn()
        self.now = end


def test_fire_in_order_on_time_and_not_when_cancelled():
    loop = Loop()
    d = Deadlines(loop)  # type: ignore[arg-type]
    fired: list[tuple[str, float]] = []
    a = d.add(1.0, lambda: fired.append(("a", loop.now)))
    loop.advance(0.25)
    b = d.add(1.0, lambda: fired.append(("b", loop.now)))
    d.add(0.5, lambda: fired.append(("c", loop.now)))        # another value: its own queue and timer
    assert sum(not h.cancelled for h in loop.timers) == 2     # one timer per timeout value, not per request
    b.cancel()
    loop.advance(0.5)
    assert fired == [("c", 100.75)]
    loop.advance(0.5)
    assert fired == [("c", 100.75), ("a", 101.0)]
    loop.advance(5)
    assert fired == [("c", 100.75), ("a", 101.0)]             # b was cancelled
    a.cancel()                                                 # after firing: harmless


def test_finished_requests_leave_the_queue_and_the_timer_rearms():
    loop = Loop()
    d = Deadlines(loop)  # type: ignore[arg-type]
    fired: list[int] = []
    for i in range(1000):
        d.add(15.0, lambda i=i: fired.append(i)).cancel()     # each request finished before its deadline
    q = d._queues[15.0]
    assert len(q.items) <= 1
    loop.advance(1.0)
    late = d.add(15.0, lambda: fired.append(-1))
    loop.advance(14.5)
    assert fired == []
    loop.advance(1.0)
    assert fired == [-1] and not q.items
    assert late.fn is None
    d.add(15.0, lambda: fired.append(-2))                      # an idle queue arms its timer again
    loop.advance(15.0)
    assert fired == [-1, -2]


def test_a_failing_callback_does_not_strand_the_others():
    loop = Loop()
    d = Deadlines(loop)  # type: ignore[arg-type]
    fired: list[str] = []

    def boom() -> None:
        raise RuntimeError("bug")

    d.add(1.0, boom)
    loop.advance(0.5)
    d.add(1.0, lambda: fired.append("next"))
    try:
        loop.advance(0.6)
    except RuntimeError:
        pass
    loop.advance(1.0)
    assert fired == ["next"]

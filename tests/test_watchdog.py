"""The progress watchdog's bookkeeping, pure (the engine's use of it: test_engine.py)."""

from __future__ import annotations

from gridlab.scheduler.watchdog import Watchdog


def test_hung_once_past_the_timeout_and_progress_resets_the_clock() -> None:
    w = Watchdog()
    w.track("a", 10, now=0)
    w.report("a", 5, now=8)
    assert w.newly_hung(now=17) == []  # 9 s since step 5
    (hung,) = w.newly_hung(now=19)
    assert hung[0] == "a"
    assert w.stop_reason("a") == "hung: step 5, no progress for 10s (hang_timeout)"
    assert w.newly_hung(now=100) == []  # flagged once
    w.track("quiet", 0, now=0)
    assert w.newly_hung(now=10**6) == []  # no hang_timeout: never


def test_a_gang_is_exempt_only_when_every_node_has_exited() -> None:
    w = Watchdog()
    w.track("g", 10, now=0)
    w.ranks_exited("g", "node-a", nodes=2, now=1)
    assert [a for a, _ in w.newly_hung(now=20)] == ["g"]  # node-b may still hang
    w2 = Watchdog()
    w2.track("g", 10, now=0)
    w2.ranks_exited("g", "node-a", nodes=2, now=1)
    w2.ranks_exited("g", "node-b", nodes=2, now=2)
    assert w2.newly_hung(now=20) == []

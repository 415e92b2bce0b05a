"""The worker's watchdogs: restart on a stuck recovery, rewind a partition whose events never arrive."""

from stream_reco.stream.repairs import DeliveryWatch, StallWatch


def test_stalled_only_after_stall_s_at_the_same_remaining_count() -> None:
    watch = StallWatch(stall_s=60.0)
    assert not watch.stalled(0.0, in_recovery=True, remaining=12)
    assert not watch.stalled(59.9, in_recovery=True, remaining=12)
    assert watch.stalled(60.0, in_recovery=True, remaining=12)


def test_progress_restarts_the_clock() -> None:
    watch = StallWatch(stall_s=60.0)
    watch.stalled(0.0, in_recovery=True, remaining=12)
    assert not watch.stalled(50.0, in_recovery=True, remaining=7)  # records arrived: progress
    assert not watch.stalled(100.0, in_recovery=True, remaining=7)
    assert watch.stalled(110.0, in_recovery=True, remaining=7)


def test_no_restart_outside_recovery_or_when_turned_off() -> None:
    watch = StallWatch(stall_s=60.0)
    watch.stalled(0.0, in_recovery=True, remaining=12)
    assert not watch.stalled(100.0, in_recovery=False, remaining=12)  # recovery finished in between
    assert not watch.stalled(200.0, in_recovery=True, remaining=12)  # a new recovery: its own clock
    assert not watch.stalled(300.0, in_recovery=True, remaining=0)  # nothing left to recover
    off = StallWatch(stall_s=0.0)
    off.stalled(0.0, in_recovery=True, remaining=5)
    assert not off.stalled(1e9, in_recovery=True, remaining=5)


def test_a_stalled_partition_is_rewound_then_declared_stuck() -> None:
    watch = DeliveryWatch(grace_s=15.0)
    # partition 5: the worker expects offset 40, the log ends at 45; partition 0 is caught up
    assert watch.check(0.0, position={5: 40, 0: 12}, end={5: 45, 0: 12}) == ([], [])
    assert watch.check(14.9, position={5: 40, 0: 12}, end={5: 45, 0: 12}) == ([], [])
    assert watch.check(15.0, position={5: 40, 0: 12}, end={5: 45, 0: 12}) == ([5], [])
    assert watch.check(20.0, position={5: 40}, end={5: 45}) == ([], [])  # the re-read gets its own grace
    assert watch.check(30.0, position={5: 40}, end={5: 46}) == ([], [5])  # it did not help: restart


def test_progress_backlog_or_idle_is_not_a_stall() -> None:
    watch = DeliveryWatch(grace_s=15.0)
    watch.check(0.0, position={5: 40}, end={5: 45})
    assert watch.check(14.0, position={5: 43}, end={5: 60}) == ([], [])  # moving: a backlog, not a stall
    assert watch.check(28.0, position={5: 43}, end={5: 60}) == ([], [])
    assert watch.check(29.0, position={5: 43}, end={5: 60}) == ([5], [])
    assert watch.check(50.0, position={5: 60}, end={5: 60}) == ([], [])  # caught up: nothing waiting
    assert watch.check(60.0, position={5: 60}, end={5: 61}) == ([], [])  # waiting again: a new clock
    assert watch.check(70.0, position={5: 60}, end={5: 61}) == ([], [])
    watch.reset()  # the worker was busy: the clock starts again
    assert watch.check(80.0, position={5: 60}, end={5: 61}) == ([], [])
    assert watch.check(94.0, position={5: 60}, end={5: 61}) == ([], [])
    assert watch.check(96.0, position={}, end={}) == ([], [])  # partition gone


def test_delivery_watch_turned_off() -> None:
    watch = DeliveryWatch(grace_s=0.0)
    watch.check(0.0, position={5: 40}, end={5: 45})
    assert watch.check(1e9, position={5: 40}, end={5: 45}) == ([], [])

"""The node's bookkeeping without ROS: latest-wins slot, warning throttle, input watch, statistics."""
from __future__ import annotations

import threading

import pytest

from stereonet_ros.node_runtime import (MAX_KIND_LENGTH, InputWatch, LatestSlot, NodeStatistics, StampedCache,
                                        WarningThrottle, camera_info_topic, overall_status, problem_kind,
                                        unmatched_warning)

TOPICS = ('/left/image_rect', '/right/image_rect', '/left/camera_info', '/right/camera_info')


def test_the_latest_item_wins_and_replaced_items_are_counted_as_dropped() -> None:
    slot: LatestSlot[int] = LatestSlot()
    assert slot.put(1) is False
    assert slot.put(2) is True and slot.put(3) is True
    assert slot.dropped == 2
    assert slot.take(timeout=0.0) == 3
    assert slot.take(timeout=0.01) is None


def test_close_wakes_a_waiting_consumer() -> None:
    slot: LatestSlot[int] = LatestSlot()
    results: list[int | None] = []
    consumer = threading.Thread(target=lambda: results.append(slot.take()))
    consumer.start()
    slot.close()
    consumer.join(timeout=5.0)
    assert not consumer.is_alive() and results == [None]
    assert slot.take() is None


def test_the_throttle_admits_one_warning_per_kind_and_period_and_counts_the_rest() -> None:
    throttle = WarningThrottle(period=5.0)
    assert throttle.admit('a', now=0.0) == (True, 0)
    assert throttle.admit('a', now=1.0) == (False, 0)
    assert throttle.admit('b', now=1.0) == (True, 0)  # another kind is not hidden
    assert throttle.admit('a', now=2.0) == (False, 0)
    assert throttle.admit('a', now=5.5) == (True, 2)
    with pytest.raises(ValueError, match='period must be >= 0'):
        WarningThrottle(-1.0)


def test_problem_kind_groups_the_same_problem_at_other_numbers() -> None:
    first = problem_kind(ValueError('image data has 10 bytes, fewer than step 4 x height 3 = 12'))
    second = problem_kind(ValueError('image data has 99 bytes, fewer than step 50 x height 2.5 = 125'))
    assert first == second == 'ValueError: image data has # bytes, fewer than step # x height # = #'
    assert problem_kind(KeyError('x')) != problem_kind(ValueError('x'))


def test_problems_differing_only_in_a_quoted_value_are_one_kind_of_bounded_length() -> None:
    # Issue 11: 1,000 sets with unique 20 KB encodings logged 999 lines and kept 19 MiB of keys.
    kinds = {problem_kind(ValueError(f"unsupported encoding '{index:05d}{'x' * 20_000}'")) for index in range(1000)}
    assert kinds == {"ValueError: unsupported encoding '…'"}
    long_message = problem_kind(ValueError('y' * 10_000))
    assert len(long_message) == MAX_KIND_LENGTH and long_message.startswith('ValueError: yyy')


def test_the_throttle_forgets_the_least_recent_kind_beyond_its_bound() -> None:
    throttle = WarningThrottle(period=5.0, max_kinds=2)
    assert throttle.admit('a', now=0.0) == (True, 0)
    assert throttle.admit('a', now=1.0) == (False, 0)  # one suppressed 'a'
    assert throttle.admit('b', now=1.0) == (True, 0)
    assert len(throttle) == 2
    assert throttle.admit('c', now=1.0) == (True, 0)  # 'a' (the least recent) is forgotten
    assert len(throttle) == 2
    assert throttle.admit('b', now=2.0) == (False, 0)  # 'b' is still remembered
    assert throttle.admit('a', now=2.0) == (True, 0)  # a forgotten kind is new again, its count gone
    for index in range(10_000):
        throttle.admit(f'kind {index}', now=3.0)
    assert len(throttle) == 2
    with pytest.raises(ValueError, match='max_kinds must be >= 1'):
        WarningThrottle(1.0, max_kinds=0)


def test_the_watch_names_a_topic_that_sends_nothing_after_its_patience() -> None:
    watch = InputWatch(TOPICS, patience=2.0, now=0.0)
    for index in range(3):
        watch.message(index, 5_000_000_001, now=10.0)
    assert watch.problem(now=11.0, approximate=False) is None  # not yet patient enough
    kind, text = watch.problem(now=12.5, approximate=False) or ('', '')
    assert kind == 'missing-input'
    assert 'nothing received on /right/camera_info' in text and 'last stamp 5.000000001' in text
    watch.matched(now=13.0)
    assert watch.problem(now=20.0, approximate=False) is None


def test_the_watch_says_when_every_topic_arrives_but_nothing_pairs() -> None:
    watch = InputWatch(TOPICS, patience=1.0, now=0.0)
    for index in range(4):
        watch.message(index, 1_000 + index, now=0.0)
    kind, text = watch.problem(now=1.0, approximate=False) or ('', '')
    assert kind == 'unmatched-stamps' and 'approximate_sync: true?' in text
    assert 'approximate_sync_tolerance_seconds' in (watch.problem(now=1.0, approximate=True) or ('', ''))[1]


def test_a_stall_is_counted_from_when_the_watch_started_not_from_the_clock_s_zero() -> None:
    # Issue 12: "no synchronized stereo set for 1453 s" on an 11-second-old node (monotonic clock).
    watch = InputWatch(TOPICS, patience=2.0, now=1442.0)
    watch.message(0, 1, now=1450.0)
    kind, text = watch.problem(now=1453.0, approximate=False) or ('', '')
    assert kind == 'missing-input' and text.startswith('no synchronized stereo set for 11.0 s:')


@pytest.mark.parametrize('image, info', [('/cam/left/image_rect', '/cam/left/camera_info'),
                                         ('/image', '/camera_info'), ('/a/b/c/image_raw', '/a/b/c/camera_info')])
def test_camera_info_is_the_sibling_of_the_image_topic_as_image_transport_derives_it(image: str, info: str) -> None:
    assert camera_info_topic(image) == info


@pytest.mark.parametrize('bad', ['left/image_rect', '/cam/', ''])
def test_camera_info_topic_wants_a_fully_qualified_image_topic(bad: str) -> None:
    with pytest.raises(ValueError, match='must be fully qualified'):
        camera_info_topic(bad)


def test_unmatched_messages_are_blamed_on_a_lost_input_when_sets_do_form_and_on_stamps_otherwise() -> None:
    from stereonet_ros.sync import SyncCounters

    before = SyncCounters(added=40, emitted=9, unmatched=3, missing=(0, 1, 0, 0))
    after = SyncCounters(added=44, emitted=9, unmatched=6, missing=(0, 2, 0, 0))
    kind, text = unmatched_warning(3, before, after, TOPICS, approximate=False)
    assert kind == 'sync-lost-input'
    assert text.startswith('3 input message(s) discarded without a match: their set never got a message of '
                           '/right/image_rect (1), which was lost before the node paired it')
    # Nothing ever paired: the stamps, not the transport.
    never = SyncCounters(added=8, emitted=0, unmatched=3, missing=(0, 1, 0, 0))
    assert unmatched_warning(3, SyncCounters(), never, TOPICS, approximate=False)[0] == 'sync-unmatched'
    # Approximate sync has no per-stamp sets to blame a topic with.
    kind, text = unmatched_warning(2, SyncCounters(), SyncCounters(emitted=5, unmatched=2), TOPICS, approximate=True)
    assert kind == 'sync-unmatched' and 'sync is approximate' in text


def test_diagnostics_report_the_worst_level_and_every_message_most_severe_first() -> None:
    # Issue 12: with camera_info missing, /diagnostics said only that the checkpoint was preliminary.
    assert overall_status([('WARN', 'PRELIMINARY checkpoint'), ('WARN', 'nothing received on /left/camera_info')]) \
        == ('WARN', 'PRELIMINARY checkpoint; nothing received on /left/camera_info')
    assert overall_status([('WARN', 'input stalled'), ('ERROR', 'CUDA failed twice: on the CPU now')]) \
        == ('ERROR', 'CUDA failed twice: on the CPU now; input stalled')
    assert overall_status([], 'waiting for synchronized stereo input') == ('OK', 'waiting for synchronized stereo input')
    with pytest.raises(ValueError, match="diagnostic level 'STALE'"):
        overall_status([('STALE', 'x')])


def test_statistics_give_rates_between_snapshots_and_latency_percentiles() -> None:
    stats = NodeStatistics(window=10)
    first = stats.snapshot(now=0.0)
    assert first.input_rate == 0.0 and first.latency_p50_ms != first.latency_p50_ms  # NaN without data
    for latency in (0.1, 0.2, 0.3, 0.4):
        stats.record_set()
        stats.record_processed(latency, model_time=0.05)
    stats.record_set()
    stats.record_dropped()
    stats.record_skipped()
    stats.record_bad_input()
    snapshot = stats.snapshot(now=2.0)
    assert snapshot.input_rate == 2.5 and snapshot.output_rate == 2.0
    assert snapshot.latency_p50_ms == pytest.approx(250.0) and snapshot.model_p50_ms == pytest.approx(50.0)
    assert (snapshot.sets, snapshot.processed, snapshot.dropped, snapshot.skipped_no_subscriber,
            snapshot.bad_inputs) == (5, 4, 1, 1, 1)


def test_stamped_cache_finds_exact_stamps_and_keeps_only_the_newest_capacity_items() -> None:
    cache: StampedCache[str] = StampedCache(2)
    cache.put(10, 'a')
    cache.put(20, 'b')
    assert (cache.get(10), cache.get(20), cache.get(15)) == ('a', 'b', None)
    cache.put(10, 'a2')  # a re-sent stamp replaces the old item and becomes the newest
    cache.put(30, 'c')  # evicts 20, the oldest added
    assert (cache.get(10), cache.get(20), cache.get(30)) == ('a2', None, 'c')
    cache.clear()
    assert cache.get(30) is None
    with pytest.raises(ValueError, match='capacity must be >= 1'):
        StampedCache(0)

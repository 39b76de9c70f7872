"""Tests for stereonet_ros.sync: exact and approximate stereo pairing by integer-ns stamps."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest

from stereonet_ros.sync import (
    LEFT_IMAGE,
    RIGHT_INFO,
    STEREO_TOPICS,
    MatchedSet,
    StereoSynchronizer,
    SyncError,
    stamp_to_ns,
)

MS = 1_000_000  # ns
PERIOD = 33 * MS  # ~30 Hz


@dataclass(frozen=True)
class Msg:
    """A stand-in message: which topic and which camera frame it belongs to."""

    topic: int
    frame: int


def stereo_stamps(n: int, right_offsets_ns: np.ndarray) -> np.ndarray:
    """(n, 4) stamps: left image/info share the frame time, right image/info share left + offset."""
    left = 1_700_000_000 * 10**9 + np.arange(n, dtype=np.int64) * PERIOD
    right = left + right_offsets_ns.astype(np.int64)
    return np.stack([left, right, left, right], axis=1)


def random_merge(rng: np.random.Generator, n: int, topics: int = 4) -> list[tuple[int, int]]:
    """A uniformly random interleaving of `topics` in-order streams of n frames: (topic, frame)."""
    labels = np.repeat(np.arange(topics), n)
    rng.shuffle(labels)
    seen = [0] * topics
    order = []
    for topic in labels.tolist():
        order.append((topic, seen[topic]))
        seen[topic] += 1
    return order


def feed(sync: StereoSynchronizer[Msg], stamps: np.ndarray,
         order: list[tuple[int, int]]) -> list[MatchedSet[Msg]]:
    out: list[MatchedSet[Msg]] = []
    for topic, frame in order:
        out.extend(sync.add(topic, int(stamps[frame, topic]), Msg(topic, frame)))
    return out


def frames_of(sets: list[MatchedSet[Msg]]) -> list[tuple[int, ...]]:
    return [tuple(m.frame for m in s.messages) for s in sets]


def check_accounting(sync: StereoSynchronizer[Msg]) -> None:
    c = sync.counters
    assert c.added == c.rejected + c.overflow + c.unmatched + len(sync.topics) * c.emitted + sync.pending


# ---------------------------------------------------------------------------- exact


@pytest.mark.parametrize('seed', range(5))
def test_exact_mode_pairs_every_frame_for_any_interleaving_of_in_order_streams(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 20
    stamps = stereo_stamps(n, np.zeros(n))
    sync: StereoSynchronizer[Msg] = StereoSynchronizer(queue_size=n, approximate=False)
    sets = feed(sync, stamps, random_merge(rng, n))
    assert frames_of(sets) == [(k, k, k, k) for k in range(n)]
    assert all(s.spread_ns == 0 and s.stamp_ns == stamps[k, 0] for k, s in enumerate(sets))
    assert sync.counters.emitted == n and sync.pending == 0
    check_accounting(sync)


@pytest.mark.parametrize('seed', range(5))
def test_exact_mode_fully_shuffled_arrival_emits_each_set_completed_before_any_later_one(seed: int) -> None:
    # Arrival order shuffled across and within topics (like message_filters' test_approxsync.py).
    # Sets must come out in stamp order, so a set is emitted iff it completes before every later
    # set does; the others are discarded or rejected as late.
    rng = np.random.default_rng(seed)
    n = 12
    stamps = stereo_stamps(n, np.zeros(n))
    order = [(topic, frame) for frame in range(n) for topic in range(4)]
    arrival = rng.permutation(len(order))
    shuffled = [order[i] for i in arrival]
    completion = [max(i for i, (_, f) in enumerate(shuffled) if f == k) for k in range(n)]
    expected = [k for k in range(n) if all(completion[k] < completion[j] for j in range(k + 1, n))]

    sync: StereoSynchronizer[Msg] = StereoSynchronizer(queue_size=n, approximate=False)
    sets = feed(sync, stamps, shuffled)
    assert [s.messages[0].frame for s in sets] == expected
    assert all(len({m.frame for m in s.messages}) == 1 for s in sets)
    assert sync.counters.overflow == 0
    check_accounting(sync)


def test_exact_mode_queue_overflow_drops_the_oldest_incomplete_group() -> None:
    # right_info missing for frames 0..4; queue_size 2 keeps the 2 newest incomplete groups.
    stamps = stereo_stamps(6, np.zeros(6))
    order = [(t, f) for f in range(5) for t in range(3)] + [(t, 5) for t in range(4)]
    sync: StereoSynchronizer[Msg] = StereoSynchronizer(queue_size=2, approximate=False)
    sets = feed(sync, stamps, order)
    assert frames_of(sets) == [(5, 5, 5, 5)]
    # Groups 0, 1, 2 overflow while frames 2, 3, 4 arrive, group 3 when frame 5 starts (3 messages
    # each); emitting 5 discards the older incomplete group 4.
    assert sync.counters.overflow == 12
    assert sync.counters.unmatched == 3
    assert sync.pending == 0
    check_accounting(sync)


def test_exact_mode_rejects_late_and_duplicate_messages() -> None:
    sync: StereoSynchronizer[str] = StereoSynchronizer(queue_size=5, approximate=False, topics=('a', 'b'))
    assert sync.add('a', 100, 'a100') == []
    assert sync.add('a', 100, 'a100 again') == []  # duplicate slot
    (pair,) = sync.add('b', 100, 'b100')
    assert pair.messages == ('a100', 'b100')
    assert sync.add('b', 100, 'late') == [] and sync.add('a', 50, 'older') == []
    assert sync.counters.rejected == 3
    assert sync.pending == 0


def test_exact_mode_ignores_the_tolerance() -> None:
    sync: StereoSynchronizer[str] = StereoSynchronizer(2, approximate=False, tolerance_ns=10**9, topics=('a', 'b'))
    assert sync.add('a', 0, 'a') == [] and sync.add('b', 1, 'b') == []
    assert sync.pending == 2


# ---------------------------------------------------------------------------- approximate

# Known answers from ros2/message_filters test/test_approximate_time_policy.cpp (stamps in
# seconds there; units do not matter to the algorithm): (queue_size, topics, input, output).
_S = 10**9
_MF_CASES: dict[str, tuple[int, int, list[tuple[int, int]], list[tuple[int, ...]]]] = {
    'ExactMatch': (10, 2, [(0, 0), (0, 1), (3, 0), (3, 1), (6, 0), (6, 1)], [(0, 0), (3, 3), (6, 6)]),
    'PerfectMatch': (10, 2, [(0, 0), (1, 1), (3, 0), (4, 1), (6, 0), (7, 1)], [(0, 1), (3, 4)]),
    'ImperfectMatch': (10, 2, [(0, 0), (1, 1), (2, 0), (3, 0), (5, 1), (6, 0), (7, 1)], [(0, 1), (6, 5)]),
    'Acceleration': (10, 2, [(0, 0), (7, 1), (12, 0), (15, 1), (17, 0), (18, 1)], [(12, 7), (17, 18)]),
    'DroppedMessagesQueue1': (1, 2, [(0, 0), (1, 1), (3, 1), (4, 0), (7, 1), (8, 0), (10, 0), (11, 1), (13, 0),
                                     (14, 1)], [(4, 3), (10, 11)]),
    'DroppedMessagesQueue2': (2, 2, [(0, 0), (1, 1), (3, 1), (4, 0), (7, 1), (8, 0), (10, 0), (11, 1), (13, 0),
                                     (14, 1)], [(0, 1), (4, 3), (8, 7), (10, 11)]),
    'LongQueue': (5, 2, [(0, 0), (1, 0), (2, 0), (3, 0), (4, 0), (5, 0), (6, 0), (7, 0), (8, 0), (3, 1), (9, 0),
                         (10, 0), (11, 0), (12, 0), (10, 1), (13, 0)], [(10, 10)]),
    'DoublePublish': (10, 2, [(0, 0), (1, 1), (3, 1), (3, 0)], [(0, 1), (3, 3)]),
    'FourTopics': (10, 4, [(0, 0), (1, 1), (2, 2), (3, 3), (5, 0), (5, 3), (6, 1), (6, 2), (8, 0), (9, 1),
                           (10, 2), (11, 3), (10, 0), (13, 0), (14, 1)],
                   [(0, 1, 2, 3), (5, 6, 6, 5), (10, 9, 10, 11)]),
    'EarlyPublish': (10, 4, [(0, 0), (1, 1), (2, 2), (3, 3), (7, 0)], [(0, 1, 2, 3)]),
}


@pytest.mark.parametrize('name', sorted(_MF_CASES))
def test_approximate_mode_reproduces_message_filters_known_answers(name: str) -> None:
    queue_size, n_topics, inputs, outputs = _MF_CASES[name]
    topics = STEREO_TOPICS[:n_topics] if n_topics == 4 else ('a', 'b')
    sync: StereoSynchronizer[int] = StereoSynchronizer(queue_size, approximate=True, topics=topics)
    got: list[tuple[int, ...]] = []
    for seconds, topic in inputs:
        got.extend(s.stamps_ns for s in sync.add(topic, seconds * _S, seconds))
    assert got == [tuple(t * _S for t in out) for out in outputs]
    counters = sync.counters
    assert counters.added == counters.overflow + counters.unmatched + n_topics * counters.emitted + sync.pending


def test_approximate_mode_age_penalty_prefers_an_older_set_that_is_at_most_10_percent_wider() -> None:
    # Topics a, b, c. Candidate sets: (17, 6, 16), spread 11, and the newer (17, 27, 23), spread
    # 10. ApproximateTime scales the newer set's extra age by 1.1: 1.1 * (27 - 17) >= 16 - 6, so
    # the older set wins, and it is provably final as soon as b's 27 arrives.
    sync: StereoSynchronizer[int] = StereoSynchronizer(10, approximate=True, topics=('a', 'b', 'c'))
    emitted = {}
    for stamp, topic in [(6, 'b'), (0, 'c'), (16, 'c'), (17, 'a'), (27, 'b'), (23, 'c')]:
        emitted[(topic, stamp)] = [s.stamps_ns for s in sync.add(topic, stamp, stamp)]
    assert emitted[('b', 27)] == [(17, 6, 16)]
    assert sum(emitted.values(), []) == [(17, 6, 16)]


def test_approximate_mode_emits_as_soon_as_no_future_message_can_do_better() -> None:
    # When a0 arrives, (0, 0, 1) is the candidate and topic a is empty. Its next message cannot
    # be older than the pivot (c's 1); b's next is 100: any other set would span [1, 100]. The
    # virtual search proves this and emits now instead of waiting for a's next message.
    sync: StereoSynchronizer[int] = StereoSynchronizer(10, approximate=True, topics=('a', 'b', 'c'))
    assert sync.add('b', 0, 0) == [] and sync.add('b', 100, 100) == [] and sync.add('c', 1, 1) == []
    assert [s.stamps_ns for s in sync.add('a', 0, 0)] == [(0, 0, 1)]


def flush(sync: StereoSynchronizer[Msg], stamps: np.ndarray) -> list[MatchedSet[Msg]]:
    """Feed one more frame, 1 ms apart left/right so it cannot itself be emitted yet."""
    last = stamps[-1, 0] + PERIOD
    out: list[MatchedSet[Msg]] = []
    for topic, stamp in enumerate([last, last + MS, last, last + MS]):
        out.extend(sync.add(topic, int(stamp), Msg(topic, -1)))
    return out


@pytest.mark.parametrize('seed', range(6))
def test_approximate_mode_recovers_the_true_frames_from_jittered_randomly_interleaved_streams(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 25
    stamps = stereo_stamps(n, rng.integers(-2 * MS, 2 * MS, n))
    sync: StereoSynchronizer[Msg] = StereoSynchronizer(queue_size=n + 2, approximate=True, tolerance_ns=5 * MS)
    sets = feed(sync, stamps, random_merge(rng, n))
    sets += flush(sync, stamps)
    assert frames_of(sets) == [(k, k, k, k) for k in range(n)]
    assert [s.stamps_ns for s in sets] == [tuple(int(v) for v in stamps[k]) for k in range(n)]
    check_accounting(sync)


def test_approximate_mode_never_pairs_stamps_further_apart_than_the_tolerance() -> None:
    rng = np.random.default_rng(7)
    n = 20
    offsets = rng.integers(-2 * MS, 2 * MS, n)
    bad = [3, 4, 11, 17]
    offsets[bad] = 10 * MS  # right camera 10 ms late: still closest to its own left frame
    stamps = stereo_stamps(n, offsets)
    order = random_merge(rng, n)

    bounded: StereoSynchronizer[Msg] = StereoSynchronizer(n + 2, approximate=True, tolerance_ns=3 * MS)
    sets = feed(bounded, stamps, order) + flush(bounded, stamps)
    assert frames_of(sets) == [(k, k, k, k) for k in range(n) if k not in bad]
    assert bounded.counters.unmatched == 4 * len(bad)
    check_accounting(bounded)

    # The same input without a bound pairs the late frames too: the bound is what excluded them.
    unbounded: StereoSynchronizer[Msg] = StereoSynchronizer(n + 2, approximate=True, tolerance_ns=None)
    sets = feed(unbounded, stamps, order) + flush(unbounded, stamps)
    assert frames_of(sets) == [(k, k, k, k) for k in range(n)]


@pytest.mark.parametrize('approximate', [False, True])
def test_frames_missing_a_message_are_skipped_and_the_rest_paired(approximate: bool) -> None:
    rng = np.random.default_rng(3)
    n = 30
    offsets = rng.integers(-2 * MS, 2 * MS, n) if approximate else np.zeros(n)
    stamps = stereo_stamps(n, offsets)
    lost = {(5, 0), (9, 3), (10, 1), (10, 2), (22, 2)}  # (frame, topic) dropped in transport
    order = [(t, f) for t, f in random_merge(rng, n) if (f, t) not in lost]
    sync: StereoSynchronizer[Msg] = StereoSynchronizer(n, approximate=approximate, tolerance_ns=5 * MS)
    sets = feed(sync, stamps, order) + (flush(sync, stamps) if approximate else [])
    incomplete = {f for f, _ in lost}
    assert frames_of(sets) == [(k, k, k, k) for k in range(n) if k not in incomplete]
    check_accounting(sync)
    if not approximate:
        # Which topic each discarded set lacked: the messages lost before the synchronizer, by topic.
        # (The last frame's set may still be pending; none of the lost frames is the last.)
        assert sync.counters.missing == (1, 1, 2, 1)
    else:
        assert sync.counters.missing == ()


def test_approximate_mode_queue_overflow_drops_oldest_and_recovers() -> None:
    # right_info silent for frames 0..9, then every topic resumes at frame 10; queue_size 3.
    stamps = stereo_stamps(15, np.zeros(15))
    order = [(t, f) for f in range(10) for t in range(3)] + [(t, f) for f in range(10, 15) for t in range(4)]
    sync: StereoSynchronizer[Msg] = StereoSynchronizer(queue_size=3, approximate=True, tolerance_ns=5 * MS)
    sets = feed(sync, stamps, order)
    assert frames_of(sets) == [(k, k, k, k) for k in range(10, 15)]
    # Topics 0-2 overflow for frames 0..6 while right_info is empty (7 each) and once more each
    # when frame 10 arrives before right_info 10 (queues hold 8, 9, 10): 3 * 8 = 24. Then frames
    # 8 and 9 (6 messages) are too far from right_info 10 and discarded.
    assert sync.counters.overflow == 24
    assert sync.counters.unmatched == 6
    assert sync.pending == 0
    check_accounting(sync)


@pytest.mark.parametrize('approximate', [False, True])
def test_a_stream_that_never_matches_yields_nothing_and_stays_bounded(approximate: bool) -> None:
    # right_info is stamped 20 ms after the right image: never within 5 ms, never identical.
    n, queue_size = 40, 4
    stamps = stereo_stamps(n, np.zeros(n))
    stamps[:, RIGHT_INFO] += 20 * MS
    sync: StereoSynchronizer[Msg] = StereoSynchronizer(queue_size, approximate=approximate, tolerance_ns=5 * MS)
    pending = []
    sets = []
    for topic, frame in random_merge(np.random.default_rng(1), n):
        sets += sync.add(topic, int(stamps[frame, topic]), Msg(topic, frame))
        pending.append(sync.pending)
    assert sets == []
    assert max(pending) <= 4 * queue_size
    assert sync.counters.overflow + sync.counters.unmatched > 0
    check_accounting(sync)


def test_approximate_mode_rejects_an_out_of_order_stamp_without_disturbing_pairing() -> None:
    n = 10
    stamps = stereo_stamps(n, np.full(n, MS))
    order = [(t, f) for f in range(n) for t in range(4)]
    sync: StereoSynchronizer[Msg] = StereoSynchronizer(5, approximate=True, tolerance_ns=5 * MS)
    sets = []
    for topic, frame in order:
        sets += sync.add(topic, int(stamps[frame, topic]), Msg(topic, frame))
        if (topic, frame) == (LEFT_IMAGE, 6):
            # A left image stamped between frames 4 and 5 arrives after frame 6's.
            sets += sync.add(LEFT_IMAGE, int(stamps[4, 0]) + 10 * MS, Msg(LEFT_IMAGE, 99))
            sets += sync.add(LEFT_IMAGE, int(stamps[6, 0]), Msg(LEFT_IMAGE, 98))  # same stamp again
    sets += flush(sync, stamps)
    assert frames_of(sets) == [(k, k, k, k) for k in range(n)]
    assert sync.counters.rejected == 2
    check_accounting(sync)


@pytest.mark.parametrize('seed', range(20))
def test_random_streams_keep_every_guarantee(seed: int) -> None:
    # Jitter up to 8 ms against a 5 ms tolerance, 10 % of messages lost, random interleaving,
    # small queues: whatever is emitted must respect the tolerance, stamp order and uniqueness.
    rng = np.random.default_rng(seed)
    n = 40
    tolerance = 5 * MS
    stamps = stereo_stamps(n, rng.integers(-8 * MS, 8 * MS, n))
    stamps[:, 2:] += rng.integers(-MS, MS, (n, 2))  # infos need not share the image stamps
    order = [tf for tf in random_merge(rng, n) if rng.random() > 0.1]
    approximate = bool(seed % 4)
    sync: StereoSynchronizer[Msg] = StereoSynchronizer(int(rng.integers(1, 6)), approximate, tolerance)
    sets = feed(sync, stamps, order)
    seen: set[Msg] = set()
    for s in sets:
        assert s.spread_ns <= (tolerance if approximate else 0)
        assert all(m.topic == t for t, m in enumerate(s.messages))
        assert not seen.intersection(s.messages)
        seen.update(s.messages)
    for topic in range(4):
        emitted = [s.stamps_ns[topic] for s in sets]
        assert emitted == sorted(set(emitted))
    check_accounting(sync)


def test_reset_forgets_state_so_a_replayed_bag_pairs_again() -> None:
    stamps = stereo_stamps(3, np.zeros(3))
    order = [(t, f) for f in range(3) for t in range(4)]
    sync: StereoSynchronizer[Msg] = StereoSynchronizer(5, approximate=True, tolerance_ns=MS)
    assert len(feed(sync, stamps, order)) == 3
    assert feed(sync, stamps, order) == []  # time went back: all rejected
    assert sync.counters.rejected == 12
    sync.reset()
    assert sync.counters.added == 0
    assert len(feed(sync, stamps, order)) == 3


def test_from_parameters_maps_zero_tolerance_to_unbounded_like_stereo_image_proc() -> None:
    unbounded: StereoSynchronizer[str] = StereoSynchronizer.from_parameters(5, True, 0.0, topics=('a', 'b'))
    assert unbounded.tolerance_ns is None
    unbounded.add('a', 0, 'a0')
    unbounded.add('b', _S, 'b1')
    assert [s.messages for s in unbounded.add('a', 2 * _S, 'a2')] == [('a0', 'b1')]

    bounded: StereoSynchronizer[str] = StereoSynchronizer.from_parameters(5, True, 0.001, topics=('a', 'b'))
    assert bounded.tolerance_ns == MS
    bounded.add('a', 0, 'a0')
    bounded.add('b', _S, 'b1')
    assert bounded.add('a', 2 * _S, 'a2') == []


def test_matched_set_gives_messages_by_name_and_index() -> None:
    sync: StereoSynchronizer[str] = StereoSynchronizer(2, approximate=False)
    out: list[MatchedSet[str]] = []
    for name in STEREO_TOPICS:
        out += sync.add(name, 5, name.upper())
    (matched,) = out
    assert matched['right_info'] == 'RIGHT_INFO' and matched[0] == 'LEFT_IMAGE'
    assert matched.stamp_ns == 5 and matched.spread_ns == 0
    with pytest.raises(SyncError, match="unknown topic 'depth'"):
        matched['depth']


def test_stamp_to_ns_reads_builtin_interfaces_time() -> None:
    from builtin_interfaces.msg import Time

    assert stamp_to_ns(Time(sec=1_700_000_000, nanosec=5)) == 1_700_000_000_000_000_005

    @dataclass
    class Stamp:
        sec: int
        nanosec: int

    assert stamp_to_ns(Stamp(2, 999_999_999)) == 2_999_999_999


# ---------------------------------------------------------------------------- errors


@pytest.mark.parametrize(('kwargs', 'match'), [
    ({'queue_size': 0}, r'queue_size must be an integer >= 1, got 0'),
    ({'queue_size': -3}, r'queue_size must be an integer >= 1, got -3'),
    ({'queue_size': 2.5}, r'queue_size must be an integer >= 1, got 2\.5'),
    ({'queue_size': True}, r'queue_size must be an integer >= 1, got True'),
    ({'tolerance_ns': -1}, r'tolerance_ns must be None or an integer >= 0, got -1'),
    ({'tolerance_ns': 0.5}, r'tolerance_ns must be None or an integer >= 0, got 0\.5'),
    ({'topics': ('left',)}, r"topics must be at least two unique names, got \('left',\)"),
    ({'topics': ('a', 'a')}, r"topics must be at least two unique names, got \('a', 'a'\)"),
])
def test_bad_parameters_raise_sync_error(kwargs: dict[str, object], match: str) -> None:
    args: dict[str, object] = {'queue_size': 5, 'approximate': True, 'tolerance_ns': None}
    args.update(kwargs)
    with pytest.raises(SyncError, match=match):
        StereoSynchronizer(**args)  # type: ignore[arg-type]


@pytest.mark.parametrize('seconds', [-0.01, math.nan, math.inf])
def test_from_parameters_rejects_negative_or_non_finite_tolerance(seconds: float) -> None:
    with pytest.raises(SyncError, match='approximate_sync_tolerance_seconds must be finite and >= 0'):
        StereoSynchronizer.from_parameters(5, True, seconds)


@pytest.mark.parametrize(('topic', 'match'), [
    ('depth', r"unknown topic 'depth'; topics are \('left_image'"),
    (4, r'topic index must be in \[0, 4\), got 4'),
    (-1, r'topic index must be in \[0, 4\), got -1'),
    (True, r'topic index must be in \[0, 4\), got True'),
])
def test_add_rejects_unknown_topics(topic: int | str, match: str) -> None:
    sync: StereoSynchronizer[None] = StereoSynchronizer(5, approximate=True)
    with pytest.raises(SyncError, match=match):
        sync.add(topic, 0, None)
    assert sync.counters.added == 0


def test_add_rejects_a_non_integer_stamp() -> None:
    sync: StereoSynchronizer[None] = StereoSynchronizer(5, approximate=False)
    with pytest.raises(SyncError, match=r'stamp_ns must be integer nanoseconds, got 1\.5'):
        sync.add(0, 1.5, None)  # type: ignore[arg-type]

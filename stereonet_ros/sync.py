"""Stereo input synchronization: pair left/right images and camera infos by integer-ns stamps.

stereo_image_proc subscribes to four topics (left image, right image, left camera_info, right
camera_info) through message_filters. message_filters is not installable here, so this module
re-implements its two policies, without threads (the node calls :meth:`StereoSynchronizer.add`
under its own lock) and without ROS (stamps are plain ``int`` nanoseconds; messages are opaque).

Policies
--------
*Exact* (``approximate=False``), as message_filters' ``ExactTime``: messages are grouped by stamp;
a set is emitted as soon as every topic has a message with that stamp. Emitting stamp ``t``
discards every incomplete group older than ``t`` (they can no longer be emitted in stamp order).
``queue_size`` bounds the number of incomplete groups (hence also each topic's queue); on overflow
the oldest group is dropped.

*Approximate* (``approximate=True``): a port of message_filters' ``ApproximateTime`` algorithm
(``sync_policies/approximate_time.hpp``): the latest of the topics' earliest messages is the
*pivot*; among the sets that contain it the one with the smallest spread (with the age penalty of
0.1 that favours older sets) is the candidate, and it is emitted as soon as no message still to
come can form a better set. ``tolerance_ns`` is its ``max_interval_duration``: a set whose stamps
spread more than it is never formed, so a message is never paired with one further than the
tolerance away. ``queue_size`` bounds each topic's queue, oldest dropped, as there.

Why ``ApproximateTime`` with a bound instead of ``ApproximateEpsilonTime`` (which stereo_image_proc
uses when ``approximate_sync_tolerance_seconds > 0``): both guarantee a spread within the
tolerance, but the epsilon policy is greedy from the oldest head and, when the heads do not fit,
discards every head within epsilon of the oldest, which can throw away messages that would have
matched the next arrival; ``ApproximateTime`` looks for the best set. A tolerance of ``None``
(``approximate_sync_tolerance_seconds == 0.0``, see :meth:`StereoSynchronizer.from_parameters`)
means unbounded, exactly stereo_image_proc's plain ``ApproximateTime``.

Guarantees (both policies)
--------------------------
- Every message is emitted at most once; per topic, emitted stamps strictly increase.
- Messages that would break that order are *rejected* on arrival and counted: in exact mode a
  stamp not newer than the last emitted set, or a second message for a (topic, stamp) slot; in
  approximate mode a stamp not newer than the topic's previous accepted message (``ApproximateTime``
  assumes per-topic order; message_filters only warns and then mis-pairs).
- Accounting: ``added == rejected + overflow + unmatched + n_topics * emitted + pending``.
- After a clock jump backwards (a bag played in a loop) every message is rejected until
  :meth:`StereoSynchronizer.reset` is called; the node should call it when it sees time go back.

Differences from message_filters, all deliberate: rejection of out-of-order stamps (above); the age
penalty comparison is done in exact integer arithmetic (``11 * a >= 10 * b`` for
``1.1 * a >= b``) instead of rclcpp's rounded ``Duration * double``; inter-message lower bounds
(``setInterMessageLowerBound``) are not offered, stereo_image_proc does not set them.
"""
from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

M = TypeVar('M')

# The four inputs of stereo_image_proc's nodes, in the order used for indices and sets.
STEREO_TOPICS: tuple[str, ...] = ('left_image', 'right_image', 'left_info', 'right_info')
LEFT_IMAGE, RIGHT_IMAGE, LEFT_INFO, RIGHT_INFO = 0, 1, 2, 3

# ApproximateTime's default age penalty 0.1, kept as a fraction so comparisons are exact integers.
_AGE_PENALTY_NUM, _AGE_PENALTY_DEN = 11, 10  # 1 + 0.1


class SyncError(ValueError):
    """A synchronizer parameter, topic or stamp is invalid."""


class TimeLike(Protocol):
    """``builtin_interfaces/Time`` read by field name (rclpy, rosbags or a dataclass)."""

    @property
    def sec(self) -> int: ...

    @property
    def nanosec(self) -> int: ...


def stamp_to_ns(stamp: TimeLike) -> int:
    """Return a ``builtin_interfaces/Time`` as integer nanoseconds (``sec * 1e9 + nanosec``).

    Integers, not float seconds: a float64 second count since 1970 resolves only ~0.2 us, too
    coarse to tell exactly equal stamps apart from nearly equal ones.
    """
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


@dataclass(frozen=True)
class MatchedSet(Generic[M]):
    """One synchronized set: a message per topic, in the synchronizer's topic order.

    Attributes:
        topics: topic names, e.g. :data:`STEREO_TOPICS`.
        stamps_ns: each message's stamp, integer nanoseconds.
        messages: the messages, as given to :meth:`StereoSynchronizer.add`.
    """

    topics: tuple[str, ...]
    stamps_ns: tuple[int, ...]
    messages: tuple[M, ...]

    @property
    def stamp_ns(self) -> int:
        """The first topic's stamp (the left image's for stereo): outputs carry its header."""
        return self.stamps_ns[0]

    @property
    def spread_ns(self) -> int:
        """Latest minus earliest stamp in the set, nanoseconds (0 for an exact match)."""
        return max(self.stamps_ns) - min(self.stamps_ns)

    def __getitem__(self, topic: int | str) -> M:
        """The message of ``topic`` (index or name)."""
        if isinstance(topic, str):
            try:
                return self.messages[self.topics.index(topic)]
            except ValueError as err:
                raise SyncError(f'unknown topic {topic!r}; topics are {self.topics}') from err
        return self.messages[topic]


@dataclass(frozen=True)
class SyncCounters:
    """Counts since construction or :meth:`StereoSynchronizer.reset`; messages unless stated.

    Attributes:
        added: messages given to ``add`` (rejected ones included).
        emitted: matched *sets* emitted.
        rejected: messages refused on arrival (stamp out of order, or a duplicate slot).
        overflow: messages dropped because their queue exceeded ``queue_size``.
        unmatched: messages discarded because no admissible set could contain them.
        missing: exact mode, per topic: discarded incomplete sets that lacked that topic's message. A
            topic that keeps lacking while the others arrive lost messages before the synchronizer
            (transport drops, or its subscription queue overflowing while the node was busy), which
            differs from stamps that never agree. Empty in approximate mode (its sets are not per stamp).
    """

    added: int = 0
    emitted: int = 0
    rejected: int = 0
    overflow: int = 0
    unmatched: int = 0
    missing: tuple[int, ...] = ()


@dataclass
class _Entry(Generic[M]):
    stamp: int
    msg: M


class StereoSynchronizer(Generic[M]):
    """Pairs messages of several topics by stamp (exact or approximate; see the module doc).

    Args:
        queue_size: per-topic queue bound (exact mode: incomplete stamp groups), >= 1.
        approximate: ``ApproximateTime``-style matching instead of identical stamps.
        tolerance_ns: approximate mode only: the largest allowed spread of stamps in a set, ns,
            >= 0; ``None`` = unbounded. Ignored in exact mode (as stereo_image_proc ignores
            ``approximate_sync_tolerance_seconds`` without ``approximate_sync``).
        topics: topic names, at least two, unique; default the four stereo inputs.

    Raises:
        SyncError: a parameter is out of range.
    """

    def __init__(self, queue_size: int, approximate: bool, tolerance_ns: int | None = None,
                 topics: Sequence[str] = STEREO_TOPICS) -> None:
        if isinstance(queue_size, bool) or not isinstance(queue_size, int) or queue_size < 1:
            raise SyncError(f'queue_size must be an integer >= 1, got {queue_size!r}')
        if tolerance_ns is not None and (isinstance(tolerance_ns, bool) or not isinstance(tolerance_ns, int)
                                         or tolerance_ns < 0):
            raise SyncError(f'tolerance_ns must be None or an integer >= 0, got {tolerance_ns!r}')
        names = tuple(topics)
        if len(names) < 2 or len(set(names)) != len(names):
            raise SyncError(f'topics must be at least two unique names, got {names}')
        self.queue_size = queue_size
        self.approximate = bool(approximate)
        self.tolerance_ns = tolerance_ns
        self.topics = names
        self.reset()

    @classmethod
    def from_parameters(cls, queue_size: int, approximate_sync: bool,
                        approximate_sync_tolerance_seconds: float,
                        topics: Sequence[str] = STEREO_TOPICS) -> StereoSynchronizer[M]:
        """Build from stereo_image_proc's parameters.

        ``approximate_sync_tolerance_seconds == 0.0`` means *no* bound, as in stereo_image_proc
        (it then uses plain ``ApproximateTime``); a positive value bounds the spread, rounded to
        the nearest nanosecond.

        Raises:
            SyncError: the tolerance is negative or not finite, or ``queue_size`` is invalid.
        """
        seconds = float(approximate_sync_tolerance_seconds)
        if not math.isfinite(seconds) or seconds < 0.0:
            raise SyncError('approximate_sync_tolerance_seconds must be finite and >= 0, '
                            f'got {approximate_sync_tolerance_seconds!r}')
        tolerance = None if seconds == 0.0 else round(seconds * 1e9)
        return cls(queue_size, approximate_sync, tolerance, topics)

    # ------------------------------------------------------------------ public state

    def reset(self) -> None:
        """Forget every queued message and counter, e.g. after the clock jumped backwards."""
        n = len(self.topics)
        self._added = self._emitted = self._rejected = self._overflow = self._unmatched = 0
        self._missing = [0] * n
        # Exact mode: stamp -> one slot per topic.
        self._groups: dict[int, list[_Entry[M] | None]] = {}
        self._last_emitted: int | None = None
        # Approximate mode: the state of message_filters' ApproximateTime, same names.
        self._deques: list[deque[_Entry[M]]] = [deque() for _ in range(n)]
        self._past: list[list[_Entry[M]]] = [[] for _ in range(n)]
        self._candidate: list[_Entry[M]] | None = None
        self._candidate_start = self._candidate_end = self._pivot_time = 0
        self._pivot: int | None = None
        self._has_dropped = [False] * n
        self._last_stamp: list[int | None] = [None] * n
        self._out: list[MatchedSet[M]] = []

    @property
    def counters(self) -> SyncCounters:
        """A snapshot of the counters."""
        return SyncCounters(self._added, self._emitted, self._rejected, self._overflow, self._unmatched,
                            () if self.approximate else tuple(self._missing))

    @property
    def pending(self) -> int:
        """Messages held, waiting for a set."""
        if not self.approximate:
            return sum(entry is not None for slots in self._groups.values() for entry in slots)
        return sum(len(q) for q in self._deques) + sum(len(p) for p in self._past)

    def topic_index(self, topic: int | str) -> int:
        """Index of ``topic`` given as index or name.

        Raises:
            SyncError: no such topic.
        """
        if isinstance(topic, str):
            if topic not in self.topics:
                raise SyncError(f'unknown topic {topic!r}; topics are {self.topics}')
            return self.topics.index(topic)
        if isinstance(topic, bool) or not isinstance(topic, int) or not 0 <= topic < len(self.topics):
            raise SyncError(f'topic index must be in [0, {len(self.topics)}), got {topic!r}')
        return topic

    def add(self, topic: int | str, stamp_ns: int, msg: M) -> list[MatchedSet[M]]:
        """Offer one message; return the sets completed by it, oldest first (often none).

        Args:
            topic: index into ``topics`` or a topic name.
            stamp_ns: the message's ``header.stamp`` as integer nanoseconds (:func:`stamp_to_ns`).
            msg: the message, returned unchanged inside a :class:`MatchedSet`.

        Raises:
            SyncError: unknown topic, or a stamp that is not an integer.
        """
        index = self.topic_index(topic)
        if isinstance(stamp_ns, bool) or not isinstance(stamp_ns, int):
            raise SyncError(f'stamp_ns must be integer nanoseconds, got {stamp_ns!r}')
        self._added += 1
        self._out = []
        if self.approximate:
            self._add_approximate(index, _Entry(stamp_ns, msg))
        else:
            self._add_exact(index, _Entry(stamp_ns, msg))
        return self._out

    # ------------------------------------------------------------------ exact

    def _add_exact(self, index: int, entry: _Entry[M]) -> None:
        if self._last_emitted is not None and entry.stamp <= self._last_emitted:
            self._rejected += 1
            return
        slots = self._groups.setdefault(entry.stamp, [None] * len(self.topics))
        if slots[index] is not None:
            self._rejected += 1
            return
        slots[index] = entry
        if all(slot is not None for slot in slots):
            full = [slot for slot in slots if slot is not None]
            self._emit(full)
            del self._groups[entry.stamp]
            self._last_emitted = entry.stamp
            for stamp in [s for s in self._groups if s < entry.stamp]:
                self._unmatched += self._discard(self._groups.pop(stamp))
        while len(self._groups) > self.queue_size:
            self._overflow += self._discard(self._groups.pop(min(self._groups)))

    def _discard(self, slots: list[_Entry[M] | None]) -> int:
        """Count the topics an incomplete set lacked; return how many messages it held."""
        for index, slot in enumerate(slots):
            if slot is None:
                self._missing[index] += 1
        return sum(slot is not None for slot in slots)

    # ------------------------------------------------------------------ approximate

    def _add_approximate(self, index: int, entry: _Entry[M]) -> None:
        last = self._last_stamp[index]
        if last is not None and entry.stamp <= last:
            self._rejected += 1
            return
        self._last_stamp[index] = entry.stamp
        self._deques[index].append(entry)
        self._process()
        # During _process() this queue may hold queue_size + 1 messages, as in message_filters.
        if len(self._deques[index]) + len(self._past[index]) > self.queue_size:
            self._recover_all()  # cancels any ongoing candidate search
            self._deques[index].popleft()
            self._overflow += 1
            self._has_dropped[index] = True
            if self._pivot is not None:
                self._candidate = None
                self._pivot = None
                self._process()

    def _emit(self, entries: Sequence[_Entry[M]]) -> None:
        self._emitted += 1
        self._out.append(MatchedSet(self.topics, tuple(e.stamp for e in entries), tuple(e.msg for e in entries)))

    def _all_non_empty(self) -> bool:
        return all(self._deques)

    def _boundary(self, times: Sequence[int], end: bool) -> tuple[int, int]:
        # message_filters' getCandidateBoundary: the earliest head (ties -> lowest index) or the
        # latest head (ties -> highest index).
        index, time = 0, times[0]
        for i in range(1, len(times)):
            if (times[i] < time) ^ end:
                index, time = i, times[i]
        return index, time

    def _head_times(self) -> list[int]:
        return [q[0].stamp for q in self._deques]

    def _virtual_times(self) -> list[int]:
        # An empty topic's next message cannot be older than the pivot (per-topic order) nor
        # than its last message; message_filters' getVirtualTime with a zero rate bound.
        times = []
        for q, past in zip(self._deques, self._past, strict=True):
            times.append(q[0].stamp if q else max(past[-1].stamp, self._pivot_time))
        return times

    def _not_better(self, end_time: int, start_time: int) -> bool:
        # (end - candidate_end) * (1 + age_penalty) >= start - candidate_start, exactly.
        return (_AGE_PENALTY_NUM * (end_time - self._candidate_end)
                >= _AGE_PENALTY_DEN * (start_time - self._candidate_start))

    def _provably_optimal(self, end_time: int) -> bool:
        # Any future candidate must span [pivot_time, end_time], already too wide to win.
        return (_AGE_PENALTY_NUM * (end_time - self._candidate_end)
                >= _AGE_PENALTY_DEN * (self._pivot_time - self._candidate_start))

    def _delete_front(self, index: int) -> None:
        self._deques[index].popleft()
        self._unmatched += 1

    def _move_front_to_past(self, index: int) -> None:
        self._past[index].append(self._deques[index].popleft())

    def _make_candidate(self) -> None:
        self._candidate = [q[0] for q in self._deques]
        # Older messages set aside for the previous candidate can no longer be used.
        for past in self._past:
            self._unmatched += len(past)
            past.clear()

    def _recover(self, index: int, count: int | None = None) -> None:
        past, q = self._past[index], self._deques[index]
        n = len(past) if count is None else count
        for _ in range(n):
            q.appendleft(past.pop())

    def _recover_all(self) -> None:
        for i in range(len(self.topics)):
            self._recover(i)

    def _publish_candidate(self) -> None:
        assert self._candidate is not None
        self._emit(self._candidate)
        self._candidate = None
        self._pivot = None
        # Put set-aside messages back; each topic's front is then the candidate's message.
        for i, q in enumerate(self._deques):
            self._recover(i)
            q.popleft()

    def _process(self) -> None:
        while self._all_non_empty():
            heads = self._head_times()
            end_index, end_time = self._boundary(heads, end=True)
            start_index, start_time = self._boundary(heads, end=False)
            for i in range(len(self.topics)):
                if i != end_index:
                    # No dropped message could have been better than the ones we have.
                    self._has_dropped[i] = False
            if self._pivot is None:
                if self.tolerance_ns is not None and end_time - start_time > self.tolerance_ns:
                    # Too wide to ever be a set: the oldest head cannot be matched.
                    self._delete_front(start_index)
                    continue
                if self._has_dropped[end_index]:
                    # The would-be pivot's topic dropped messages; one of them may have fitted.
                    self._delete_front(start_index)
                    continue
                self._make_candidate()
                self._candidate_start, self._candidate_end = start_time, end_time
                self._pivot, self._pivot_time = end_index, end_time
                self._move_front_to_past(start_index)
            else:
                if self._not_better(end_time, start_time):
                    self._move_front_to_past(start_index)
                else:
                    self._make_candidate()
                    self._candidate_start, self._candidate_end = start_time, end_time
                    self._move_front_to_past(start_index)
            if start_index == self._pivot:
                # Every candidate for this pivot has been tried: the best one is final.
                self._publish_candidate()
            elif self._provably_optimal(end_time):
                self._publish_candidate()
            elif not self._all_non_empty():
                self._virtual_search()

    def _virtual_search(self) -> None:
        # Assume the earliest possible arrival for empty topics and try to prove optimality now
        # instead of waiting for more messages; undo the virtual moves if that fails.
        moves = [0] * len(self.topics)
        while True:
            times = self._virtual_times()
            _, end_time = self._boundary(times, end=True)
            start_index, start_time = self._boundary(times, end=False)
            if self._provably_optimal(end_time):
                self._publish_candidate()  # also undoes the virtual moves
                return
            if not self._not_better(end_time, start_time):
                # An optimistic future set beats the candidate: wait for real messages.
                for i, count in enumerate(moves):
                    self._recover(i, count)
                return
            # start_index cannot be the pivot here (then start == pivot time and one test held).
            self._move_front_to_past(start_index)
            moves[start_index] += 1

"""The node's run-time bookkeeping, without ROS: hand-off slot, warning throttle, input watch, statistics.

- :class:`LatestSlot`: the bounded queue of one between the executor (which receives and pairs
  messages) and the inference thread. A new pair replaces a waiting one, which is counted as
  dropped, so a slow CPU never builds a backlog of stale frames: the latest pair wins.
- :class:`WarningThrottle`: at most one warning per *kind* of problem per period, so that one bad
  input stream cannot flood the log and hide another problem (rclpy's own throttle is per call site).
- :class:`InputWatch`: notices inputs that arrive but never form a synchronized set (a missing
  camera_info, stamps that never match) and says which topic is at fault.
- :class:`NodeStatistics`: rates, latency percentiles and counters for ``/diagnostics``.
- :class:`StampedCache`: the latest few messages of an optional input by stamp (the colour image
  the cloud takes its ``rgb`` from), looked up by the stamp of a synchronized set.

Clocks are passed in (``now`` arguments, seconds, monotonic) so that tests need no sleeps.
"""
from __future__ import annotations

import re
import threading
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np

from stereonet_ros.sync import SyncCounters

T = TypeVar('T')

_NUMBER = re.compile(r'[-+]?\d+(\.\d*)?(e[-+]?\d+)?')


class LatestSlot(Generic[T]):
    """A thread-safe queue of at most one item where a new item replaces the waiting one."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._item: T | None = None
        self._closed = False
        self.dropped = 0
        """Items replaced before the consumer took them."""

    def put(self, item: T) -> bool:
        """Offer ``item``; returns True when it replaced (dropped) a waiting one."""
        with self._condition:
            replaced = self._item is not None
            if replaced:
                self.dropped += 1
            self._item = item
            self._condition.notify()
            return replaced

    def take(self, timeout: float | None = None) -> T | None:
        """The waiting item (removing it), waiting up to ``timeout`` s; None on timeout or once closed."""
        with self._condition:
            self._condition.wait_for(lambda: self._item is not None or self._closed, timeout)
            if self._closed:
                return None
            item, self._item = self._item, None
            return item

    def close(self) -> None:
        """Wake and stop the consumer: every later ``take`` returns None."""
        with self._condition:
            self._closed = True
            self._condition.notify_all()


class StampedCache(Generic[T]):
    """The ``capacity`` most recently added items by stamp (ns), thread-safe; the oldest is evicted."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f'capacity must be >= 1, got {capacity}')
        self._lock = threading.Lock()
        self._items: OrderedDict[int, T] = OrderedDict()
        self.capacity = capacity

    def put(self, stamp_ns: int, item: T) -> None:
        with self._lock:
            self._items.pop(stamp_ns, None)
            self._items[stamp_ns] = item
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)

    def get(self, stamp_ns: int) -> T | None:
        """The item with exactly this stamp, or None."""
        with self._lock:
            return self._items.get(stamp_ns)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")
MAX_KIND_LENGTH = 160
"""Characters of a throttling key: enough to tell problems apart, bounded whatever the message holds."""


def problem_kind(error: BaseException) -> str:
    """A throttling key for an error: its class and message with quoted values and numbers blanked,
    cut to :data:`MAX_KIND_LENGTH`, so that the same problem at other stamps, sizes or encodings is
    throttled together while different problems are not. A message carrying a sender's 20 KB string
    used to make a key of its own every time (issue 11: 999 log lines from 1,000 messages)."""
    text = _NUMBER.sub('#', _QUOTED.sub("'…'", str(error)))
    return f'{type(error).__name__}: {text}'[:MAX_KIND_LENGTH]


class WarningThrottle:
    """Lets one message per ``kind`` through every ``period`` seconds, counting the suppressed ones.

    Remembers at most ``max_kinds`` kinds: past that, the kind seen least recently is forgotten (its
    suppressed count with it), so that a stream of ever-new problems cannot grow the node's memory.
    """

    def __init__(self, period: float, max_kinds: int = 256) -> None:
        if not period >= 0.0:
            raise ValueError(f'period must be >= 0, got {period!r}')
        if max_kinds < 1:
            raise ValueError(f'max_kinds must be >= 1, got {max_kinds!r}')
        self.period = period
        self.max_kinds = max_kinds
        self._last: dict[str, float] = {}  # insertion order = least recently admitted first
        self._suppressed: dict[str, int] = {}
        self._lock = threading.Lock()

    def admit(self, kind: str, now: float) -> tuple[bool, int]:
        """Whether a ``kind`` warning may be logged at ``now``, and how many were suppressed since the last."""
        with self._lock:
            last = self._last.get(kind)
            if last is not None and now - last < self.period:
                self._suppressed[kind] = self._suppressed.get(kind, 0) + 1
                return False, 0
            self._last.pop(kind, None)
            self._last[kind] = now  # (re)inserted last: the most recent
            while len(self._last) > self.max_kinds:
                oldest = next(iter(self._last))
                del self._last[oldest]
                self._suppressed.pop(oldest, None)
            return True, self._suppressed.pop(kind, 0)

    def __len__(self) -> int:
        """Kinds remembered now."""
        return len(self._last)


def unmatched_warning(lost: int, before: SyncCounters, after: SyncCounters, topics: Sequence[str],
                      approximate: bool) -> tuple[str, str]:
    """``(kind, sentence)`` for messages the synchronizer discarded unmatched, naming the likely cause.

    In exact sync, when sets do form and the discarded ones lacked a message of some topics, those
    messages never reached the synchronizer: lost in transport (best effort drops large images between
    processes) or in the subscription's queue while the node was busy. That is the common cause under
    load (issue 11: 1,830 of 4,801 sets paired in a soak, blamed on stamps). Otherwise the stamps never
    formed a set (a missing topic, or stamps that differ).
    """
    earlier = before.missing or (0,) * len(after.missing)
    lacking = [(topic, now - then) for topic, now, then in zip(topics, after.missing, earlier, strict=False)
               if now > then]
    if not approximate and lacking and after.emitted > 0:
        names = ', '.join(f'{topic} ({count})' for topic, count in lacking)
        return ('sync-lost-input',
                f'{lost} input message(s) discarded without a match: their set never got a message of {names}, '
                'which was lost before the node paired it: in transport (best effort drops large images; see '
                'reliable_inputs or the Fast DDS profile in the README) or in the subscription queue while the '
                'node was busy (a larger queue_size, or a lower input rate)')
    return ('sync-unmatched',
            f'{lost} input message(s) discarded without a match: their stamps never formed a set with the other '
            f'three topics (a missing or late topic, or stamps that differ; sync is '
            f'{"approximate" if approximate else "exact"})')


def camera_info_topic(image_topic: str) -> str:
    """The camera_info topic beside an image topic, as image_transport's ``getCameraInfoTopic``: the
    image topic's last name replaced by ``camera_info`` (``/cam/left/image_rect`` -> ``/cam/left/camera_info``).

    Raises:
        ValueError: not a fully qualified topic name (``/...``, not ending in ``/``).
    """
    if not image_topic.startswith('/') or image_topic.endswith('/'):
        raise ValueError(f'image topic {image_topic!r}: must be fully qualified (/ns/name)')
    return image_topic.rsplit('/', 1)[0] + '/camera_info'


DIAGNOSTIC_LEVELS = ('OK', 'WARN', 'ERROR')
"""diagnostic_msgs/DiagnosticStatus levels this node reports, least to most severe."""


def overall_status(problems: Sequence[tuple[str, str]], idle_message: str = 'running') -> tuple[str, str]:
    """One ``(level, message)`` for /diagnostics from every current problem ``(level, message)``.

    The level is the worst one; the message holds every problem's, the most severe first (in the
    given order among equals), joined by ``'; '``: a preliminary checkpoint must not hide a missing
    input (issue 12). No problem gives ``('OK', idle_message)``.

    Raises:
        ValueError: a level that is not one of :data:`DIAGNOSTIC_LEVELS`.
    """
    for level, _ in problems:
        if level not in DIAGNOSTIC_LEVELS:
            raise ValueError(f'diagnostic level {level!r}: must be one of {DIAGNOSTIC_LEVELS}')
    ordered = sorted(problems, key=lambda item: -DIAGNOSTIC_LEVELS.index(item[0]))  # stable: keeps ties' order
    if not ordered:
        return 'OK', idle_message
    return ordered[0][0], '; '.join(message for _, message in ordered)


class InputWatch:
    """Which inputs arrived since the last synchronized set, to explain a stall.

    Args:
        topics: the (resolved) input topic names, in the synchronizer's order.
        patience: seconds with inputs arriving but no set before :meth:`problem` reports.
        now: the time the watch starts, on the clock later calls use (the node's ``time.monotonic()``):
            a stall is counted from here, not from the clock's zero.
    """

    def __init__(self, topics: Sequence[str], patience: float, now: float) -> None:
        self.topics = tuple(topics)
        self.patience = patience
        self.reset(now)

    def reset(self, now: float) -> None:
        self._counts = [0] * len(self.topics)
        self._stamps: list[int | None] = [None] * len(self.topics)
        self._since = now
        self._first: float | None = None

    def message(self, index: int, stamp_ns: int, now: float) -> None:
        self._counts[index] += 1
        self._stamps[index] = stamp_ns
        if self._first is None:
            self._first = now

    def matched(self, now: float) -> None:
        """A synchronized set was formed: start over."""
        self.reset(now)

    def problem(self, now: float, approximate: bool) -> tuple[str, str] | None:
        """``(kind, sentence)`` naming why no set formed, once inputs arrived ``patience`` s ago without one.

        ``kind`` is ``'missing-input'`` (a topic sent nothing) or ``'unmatched-stamps'`` (all sent,
        nothing paired), so the two are throttled apart.
        """
        if self._first is None or now - self._first < self.patience:
            return None
        missing = [topic for topic, count in zip(self.topics, self._counts, strict=True) if count == 0]
        parts = []
        for topic, count, stamp in zip(self.topics, self._counts, self._stamps, strict=True):
            if count:
                parts.append(f'{topic}: {count} (last stamp {stamp // 1_000_000_000}.{stamp % 1_000_000_000:09d})'
                             if stamp is not None else f'{topic}: {count}')
        elapsed = now - self._since
        if missing:
            return ('missing-input', f'no synchronized stereo set for {elapsed:.1f} s: nothing received on '
                    f'{", ".join(missing)} (received {"; ".join(parts)})')
        hint = ('stamps spread more than approximate_sync_tolerance_seconds?' if approximate
                else 'exact sync needs identical stamps on all four topics; set approximate_sync: true?')
        return ('unmatched-stamps',
                f'no synchronized stereo set for {elapsed:.1f} s although all inputs arrive '
                f'({"; ".join(parts)}): {hint}')


@dataclass(frozen=True)
class StatisticsSnapshot:
    """Rates (per second over the last period) and percentiles (over the last ``window`` pairs)."""

    input_rate: float
    output_rate: float
    latency_p50_ms: float
    latency_p95_ms: float
    model_p50_ms: float
    sets: int
    processed: int
    dropped: int
    skipped_no_subscriber: int
    bad_inputs: int


class NodeStatistics:
    """Counters and recent timings of the node; thread-safe (executor and worker both record)."""

    def __init__(self, window: int = 100) -> None:
        self._lock = threading.Lock()
        self.sets = 0
        self.processed = 0
        self.dropped = 0
        self.skipped_no_subscriber = 0
        self.bad_inputs = 0
        self._latencies: deque[float] = deque(maxlen=window)
        self._model_times: deque[float] = deque(maxlen=window)
        self._previous: tuple[float, int, int] | None = None

    def record_set(self) -> None:
        with self._lock:
            self.sets += 1

    def record_dropped(self) -> None:
        with self._lock:
            self.dropped += 1

    def record_skipped(self) -> None:
        with self._lock:
            self.skipped_no_subscriber += 1

    def record_bad_input(self) -> None:
        with self._lock:
            self.bad_inputs += 1

    def record_processed(self, latency: float, model_time: float) -> None:
        """A pair published: ``latency`` from set formed to published, seconds; model time, seconds."""
        with self._lock:
            self.processed += 1
            self._latencies.append(latency)
            self._model_times.append(model_time)

    def snapshot(self, now: float) -> StatisticsSnapshot:
        """Rates since the previous snapshot (0 for the first) and percentiles of the window."""
        with self._lock:
            sets, processed = self.sets, self.processed
            latencies = np.asarray(self._latencies, dtype=np.float64)
            model_times = np.asarray(self._model_times, dtype=np.float64)
            previous, self._previous = self._previous, (now, sets, processed)
            counters = (self.dropped, self.skipped_no_subscriber, self.bad_inputs)
        input_rate = output_rate = 0.0
        if previous is not None and now > previous[0]:
            elapsed = now - previous[0]
            input_rate = (sets - previous[1]) / elapsed
            output_rate = (processed - previous[2]) / elapsed

        def percentile(values: np.ndarray, q: float) -> float:
            return float(np.percentile(values, q)) * 1000.0 if values.size else float('nan')

        return StatisticsSnapshot(input_rate=input_rate, output_rate=output_rate,
                                  latency_p50_ms=percentile(latencies, 50), latency_p95_ms=percentile(latencies, 95),
                                  model_p50_ms=percentile(model_times, 50), sets=sets, processed=processed,
                                  dropped=counters[0], skipped_no_subscriber=counters[1], bad_inputs=counters[2])

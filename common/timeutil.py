"""Conversions between float seconds and protobuf Timestamp / Duration, and clocks."""

from __future__ import annotations

import time

from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp


def ts(seconds: float) -> Timestamp:
    out = Timestamp()
    out.FromNanoseconds(int(seconds * 1e9))
    return out


def from_ts(value: Timestamp) -> float:
    return value.ToNanoseconds() / 1e9


def duration(seconds: float) -> Duration:
    out = Duration()
    out.FromNanoseconds(int(seconds * 1e9))
    return out


def from_duration(value: Duration) -> float:
    return value.ToNanoseconds() / 1e9


class Clock:
    """Wall time for records, monotonic time for timeouts; tests substitute a fake."""

    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()


class FakeClock(Clock):
    def __init__(self, start: float = 1_000_000.0) -> None:
        self.now = start

    def time(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

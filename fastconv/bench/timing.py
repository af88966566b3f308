"""How ``fastconv bench`` times one call: warm-up, looped samples, median.

A call shorter than ``min_time`` is looped so that one sample lasts at least ``min_time``; the
figure is the time per call. ``sync`` waits for a device to finish its queued work (a no-op on
the CPU), so GPU kernels fall inside the timed region.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["QUICK", "Settings", "measure", "sample", "warm_up"]


@dataclass
class Settings:
    """How each measurement is taken: warm-up calls, samples, and the least seconds per sample."""

    warmup: int = 2
    repeat: int = 7
    min_time: float = 0.02  # seconds per sample; short calls are looped to reach it


QUICK = Settings(warmup=1, repeat=1, min_time=0.0)  # `fastconv bench --quick`: a smoke run


def warm_up(fn: Callable[[], Any], sync: Callable[[], None], settings: Settings) -> int:
    """Run ``fn`` ``settings.warmup`` times (JIT compilation, first-touch allocation) and return how
    many calls one sample needs to last ``settings.min_time`` seconds."""
    single = math.inf
    for _ in range(max(1, settings.warmup)):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        single = min(single, time.perf_counter() - start)
    if settings.min_time > 0 and single < settings.min_time:
        return min(10_000, max(1, math.ceil(settings.min_time / max(single, 1e-7))))
    return 1


def sample(fn: Callable[[], Any], sync: Callable[[], None], number: int) -> float:
    """Seconds per call of ``fn`` over ``number`` back-to-back calls, the device synchronised around them."""
    sync()
    start = time.perf_counter()
    for _ in range(number):
        fn()
    sync()
    return (time.perf_counter() - start) / number


def measure(fn: Callable[[], Any], sync: Callable[[], None], settings: Settings) -> dict[str, Any]:
    """Median seconds per call of ``fn`` after warming up; ``sync`` waits for a device to finish.

    Returns ``{"median_s", "times_s", "number"}``: ``times_s`` holds one time per call for each
    sample (``number`` calls per sample).
    """
    number = warm_up(fn, sync, settings)
    times = [sample(fn, sync, number) for _ in range(max(1, settings.repeat))]
    return {"median_s": statistics.median(times), "times_s": times, "number": number}

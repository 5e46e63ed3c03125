"""The block design shared by the watch benchmarks: plain and watched steps, interleaved."""
from __future__ import annotations

import time
from typing import Callable

import gradscope

BLOCK = 10   # steps per block
WARMUP = 8   # first steps of each watch session: hooks, first graph walk, dense max-abs reads


def plain_and_watched(step: Callable[[], None], model, optimizer, steps: int) -> tuple:
    """(plain step times, watched step times after each session's warm-up, every watched time).

    Blocks of BLOCK plain steps and of WARMUP + BLOCK watched steps (a new session each) alternate
    until there are ``steps`` plain steps, so machine noise hits both alike.
    """
    plain, watched, every = [], [], []
    while len(plain) < steps:
        for _ in range(BLOCK):
            t0 = time.perf_counter()
            step()
            plain.append(time.perf_counter() - t0)
        with gradscope.watch(model, optimizer):
            for k in range(WARMUP + BLOCK):
                t0 = time.perf_counter()
                step()
                every.append(time.perf_counter() - t0)
                if k >= WARMUP:
                    watched.append(every[-1])
    return plain, watched, every

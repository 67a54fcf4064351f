"""Independent jobs side by side: runs of an ablation, the demo's LMs.

On a small CPU, one-thread processes side by side do more work than one process with
every thread: torch's intra-op threads idle on the many small operations of a small
model (two one-thread demo steps at once: 0.55 s each, against 0.40 s for one step on
two threads, AMD EPYC AVX2; bench/parallel.py). A job's result depends on its thread
count (the order of float sums), never on how many jobs run beside it.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from contextlib import contextmanager
from multiprocessing import get_context

import torch

log = logging.getLogger(__name__)


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity, not the host's count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _die_with_parent(parent: int) -> None:
    """Linux: this process gets SIGTERM when its parent dies, however the parent dies
    (SIGKILL included), so a killed ``ablate`` leaves no job training on (the standard
    library has no call for it: prctl through ctypes)."""
    if not sys.platform.startswith("linux"):
        return
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def _worker(threads: int, level: int, parent: int) -> None:
    """A job's process: dies with its parent, its thread count, and log lines that say
    whose they are."""
    _die_with_parent(parent)
    if threads:
        torch.set_num_threads(threads)
    logging.basicConfig(level=level, format="%(asctime)s %(processName)s %(message)s", datefmt="%H:%M:%S")


class Steps:
    """Calls for :func:`run_jobs` and what each waits for, gathered step by step: a step
    already done is left out, and so is every wait on it."""

    def __init__(self):
        self.calls: list[tuple] = []
        self.after: list[tuple[int, ...]] = []

    def add(self, done: bool, job: tuple, deps: Sequence[int | None] = ()) -> int | None:
        """-> the step's index, or None when ``done`` (what a later step may wait on)."""
        if done:
            return None
        self.calls.append(job)
        self.after.append(tuple(d for d in deps if d is not None))
        return len(self.calls) - 1


def call(fn: Callable, *args):
    """``fn(*args)``: lets jobs of different functions share one ``run_jobs``."""
    return fn(*args)


def run_jobs(
    fn: Callable, calls: Sequence[tuple], jobs: int = 1, threads: int = 0, after: Sequence[Sequence[int]] = ()
) -> list:
    """``[fn(*call) for call in calls]``, ``jobs`` at a time, each with ``threads`` torch
    threads (0: torch's default). ``after[i]``: the indices of the calls that must finish
    before call ``i`` starts (each smaller than ``i``); a call starts as soon as a process
    is free and its own are done, in the order given. ``jobs == 1`` runs them here, one
    after another; more go to fresh processes (spawned: forking a process that has run
    torch can deadlock in its thread pools), so ``fn`` and its arguments must be picklable. The
    first failure is raised once the jobs under way have finished; no new one starts after it.
    Interrupted (Ctrl-C, SIGTERM, or the parent killed outright on Linux), the jobs under
    way are stopped at once: none goes on writing into its run directory unwatched."""
    if jobs < 1 or threads < 0:
        raise ValueError(f"jobs={jobs} must be at least 1 and threads={threads} at least 0")
    after = [tuple(a) for a in after] or [()] * len(calls)
    if len(after) != len(calls) or any(not 0 <= j < i for i, a in enumerate(after) for j in a):
        raise ValueError("after must give, for every call, indices of earlier calls only")
    if jobs == 1:  # here, at ``threads`` for these calls only (a caller's own work keeps its count)
        had = torch.get_num_threads()
        torch.set_num_threads(threads or had)
        try:
            return [fn(*c) for c in calls]
        finally:
            torch.set_num_threads(had)
    ctx = get_context("spawn")
    with (
        ProcessPoolExecutor(
            jobs, mp_context=ctx, initializer=_worker, initargs=(threads, log.getEffectiveLevel(), os.getpid())
        ) as pool,
        _sigterm_raises(),
    ):
        results: dict[int, object] = {}
        running: dict = {}
        waiting = list(range(len(calls)))
        try:
            while waiting or running:
                for i in [i for i in waiting if all(j in results for j in after[i])]:
                    running[pool.submit(fn, *calls[i])] = i
                    waiting.remove(i)
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for f in finished:
                    results[running.pop(f)] = f.result()
        except (KeyboardInterrupt, SystemExit):
            # Python 3.11's pool cannot stop a running job (3.14 adds terminate_workers)
            for p in list(pool._processes.values()):
                p.terminate()
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        except BaseException:
            pool.shutdown(cancel_futures=True)
            raise
    return [results[i] for i in range(len(calls))]


@contextmanager
def _sigterm_raises():
    """While open (in the main thread), SIGTERM raises SystemExit(143) instead of ending
    the process on the spot, so ``run_jobs`` can stop its jobs first."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    had = signal.signal(signal.SIGTERM, _exit_on_signal)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, had)


def _exit_on_signal(signum, frame):
    raise SystemExit(128 + signum)

"""Answers from child processes started with multiprocessing's spawn: light on imports, since every child
imports the test module again."""

from __future__ import annotations

import queue
import time


def collect_answers(answers, procs, timeout: float = 120) -> dict:
    """One (name, value) answer from each child process; fails at once, with the exit codes, when one died
    first (its traceback is in the captured stderr) rather than waiting out the timeout."""
    collected, deadline = {}, time.monotonic() + timeout
    while len(collected) < len(procs):
        try:
            name, value = answers.get(timeout=0.5)
            collected[name] = value
        except queue.Empty:
            dead = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
            assert not dead, f"a child process died (exit codes {dead}): its traceback is in the captured stderr"
            assert time.monotonic() < deadline, "the child processes did not answer in time"
    return collected

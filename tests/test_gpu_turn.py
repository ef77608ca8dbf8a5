"""engine/gpu_turn.py: a job's turn on the GPU, given up early and taken back."""

from __future__ import annotations

import threading
import time

from engine.gpu_turn import GpuTurn


def test_a_release_before_the_end_is_told_and_frees_the_lock():
    lock, told = threading.Lock(), []
    with GpuTurn(lock, on_release=lambda: told.append("free")) as turn:
        assert lock.locked() and turn.held
        turn.release()
        assert not lock.locked() and not turn.held and told == ["free"]
        turn.release()  # once
    assert told == ["free"] and not lock.locked()


def test_the_end_frees_the_lock_without_telling():
    lock, told = threading.Lock(), []
    with GpuTurn(lock, on_release=lambda: told.append("free")):
        pass
    assert told == [] and not lock.locked()


def test_taking_the_turn_back_waits_for_the_job_holding_it():
    lock = threading.Lock()
    events = []
    with GpuTurn(lock) as first:
        first.release()
        second = GpuTurn(lock)
        second.take_back()  # the next job has the GPU now

        def next_job_ends():
            time.sleep(0.3)
            events.append("next job done")
            second.release()

        threading.Thread(target=next_job_ends).start()
        first.take_back()
        events.append("first job again")
        assert first.held and lock.locked()
    assert events == ["next job done", "first job again"] and not lock.locked()

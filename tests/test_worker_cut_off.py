"""A worker cut off from the database past its lease comes back and its late writes are refused, on both backends.

Worker A's store connection hangs (every call waits, as over a dead network) and its GPU is held still (its
transformer waits at its next call), or the connection hangs just as A completes. A's lease runs out, worker B,
on another host under the same worker name, takes the job over and finishes it. Then A comes back: its renew,
progress and completion carry the old claim's number and are refused, and A drops the job without failing or
cancelling it."""

from __future__ import annotations

import asyncio
import threading

import pytest
from helpers import job_finished, picture_bytes, wait_for, worker_settings

from engine.worker import ModelCache, Worker
from storage.jobs import JobParams, JobState, NewJob
from storage.store import open_store

LEASE_SECONDS = 2.0  # the shortest the settings allow


class CutOff:
    """A store whose calls hang while cut, then go through; records what each call made while cut returned."""

    def __init__(self, store, cut_on: str | None = None):
        self._store = store
        self._cut_on = cut_on  # a method whose first call cuts the connection before it is sent
        self.healed = asyncio.Event()
        self.healed.set()
        self.calls: list[str] = []
        self.late: list[tuple[str, object]] = []  # every call made once the connection was first cut
        self.was_cut = False

    def cut(self) -> None:
        self.was_cut = True
        self.healed.clear()

    def heal(self) -> None:
        self.healed.set()

    def __getattr__(self, name):
        method = getattr(self._store, name)
        if not asyncio.iscoroutinefunction(method):
            return method

        async def call(*args, **kwargs):
            self.calls.append(name)
            if name == self._cut_on:
                self._cut_on = None
                self.cut()
            late = self.was_cut
            await self.healed.wait()
            result = await method(*args, **kwargs)
            if late:
                self.late.append((name, result))
            return result

        return call


class HeldGpu(ModelCache):
    """The worker's own models, whose transformer waits at each call while `running` is clear."""

    def __init__(self, settings, running: threading.Event):
        super().__init__(settings)
        self.running = running

    def get(self, variant):
        models = super().get(variant)
        if not getattr(models.transformer, "_held", False):
            models.transformer.register_forward_pre_hook(self._wait_while_held)
            models.transformer._held = True
        return models

    def _wait_while_held(self, *_) -> None:  # None: the call's inputs unchanged
        self.running.wait()


@pytest.mark.parametrize("moment", ["rendering", "completing"])
async def test_a_worker_cut_off_past_its_lease_has_its_late_writes_refused(tmp_path, tiny_models_dir, database_url,
                                                                           moment):
    settings = worker_settings(tmp_path, tiny_models_dir, database_url=database_url, lease_seconds=LEASE_SECONDS)
    frontend, host_a, host_b = [await open_store(settings) for _ in range(3)]
    try:
        params = JobParams(seconds=2.4, seed=6, resolution=64, steps=3)
        job_id = (await frontend.enqueue(NewJob("telegram", "c", "u", "a fox", params), picture_bytes())).job_id
        store_a = CutOff(host_a, cut_on="complete" if moment == "completing" else None)
        gpu_a = threading.Event()
        gpu_a.set()
        worker_a = asyncio.create_task(Worker(store_a, settings, "gpu0", HeldGpu(settings, gpu_a)).run(max_jobs=1))

        if moment == "rendering":  # A is mid-render when its network and GPU stop
            await wait_for(lambda: _progressed(frontend, job_id), timeout=120, every=0.02)
            store_a.cut()
            gpu_a.clear()
        else:  # A has made the video and its completion hangs
            await wait_for(lambda: _is_cut(store_a), timeout=180, every=0.02)
        await asyncio.sleep(LEASE_SECONDS * 1.5)  # A's lease runs out
        await Worker(host_b, settings, "gpu0").run(max_jobs=1)  # another host, the same worker name
        taken = await wait_for(lambda: job_finished(frontend, job_id), timeout=120)
        assert taken.state is JobState.DONE and taken.lease == 2 and taken.attempts == 2, taken.error

        store_a.heal()  # A comes back
        gpu_a.set()
        await asyncio.wait_for(worker_a, timeout=120)
        print(f"{moment}: A's late writes {store_a.late}")
        assert store_a.late and all(result in (False, None) for _, result in store_a.late), store_a.late
        # Whether a step's progress write was on its way at the cut is a matter of timing; the lease renewal
        # always is (it runs every third of a lease), and any progress A writes after the cut is in `late`.
        expected = {"rendering": {"renew"}, "completing": {"complete"}}[moment]
        assert expected <= {name for name, _ in store_a.late}
        assert "fail" not in store_a.calls and "mark_cancelled" not in store_a.calls
        final = await frontend.get(job_id)
        assert final.state is JobState.DONE and final.error is None and final.lease == 2
        assert (final.video, final.progress) == (taken.video, taken.progress)  # nothing of A's written after B
    finally:
        for store in (frontend, host_a, host_b):
            await store.close()


async def _progressed(store, job_id: int) -> bool:
    return (await store.get(job_id)).progress.step >= 1


async def _is_cut(store: CutOff) -> bool:
    return not store.healed.is_set()

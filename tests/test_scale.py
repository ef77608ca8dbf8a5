"""Issue 18's scale figure on a real PostgreSQL server: 1,000 jobs from 200 people taken by 4 workers on 2 "hosts"
(two processes, two workers each, every worker with its own store and connections), claim-and-complete loops
without the engine. Every job done once (no double claims, none lost), the fair order kept, claims a second
printed (run with -s to see it; notes/issue18_postgres.md records it)."""

from __future__ import annotations

import asyncio
import io
import multiprocessing
import time
from collections import defaultdict

import pytest
from child_processes import collect_answers
from PIL import Image

from storage.jobs import JobParams, JobState, NewJob
from storage.settings import Settings
from storage.store import open_store

pytestmark = pytest.mark.scale

PEOPLE, JOBS_EACH, HOSTS, WORKERS_PER_HOST = 200, 5, 2, 2
# Claims from several workers overlap: SKIP LOCKED passes over the rows the other 3 claims hold, and the other
# workers' completions in flight may or may not be seen (any mix of them). So a claim may take any of the first
# this-many jobs of the fair order at its time (7 is the worst seen here, on 2 busy cores); first come, first
# served would put a person's second job behind everyone's first, about 200 places out.
ORDER_SLACK = 3 * HOSTS * WORKERS_PER_HOST


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 24), (200, 10, 10)).save(buffer, format="PNG")
    return buffer.getvalue()


def _settings(data_dir: str, url: str) -> Settings:
    return Settings(data_dir=data_dir, database_url=url, max_queued_per_user=JOBS_EACH, lease_seconds=30.0,
                    fair_queue=True)


def _host(url: str, data_dir: str, host: str, ready, start, results) -> None:
    """One host: its workers claim and complete until the queue is empty; answers {worker: [(job, lease)]}."""

    async def worker(store, name: str) -> list[tuple[int, int, float, float, float]]:
        """(job, lease, claim asked, claim answered, completion answered) for each job it took; one clock for
        every process on this machine (time.time)."""
        taken = []
        while True:
            asked = time.time()
            job = await store.claim(name)
            if job is None:
                return taken
            answered = time.time()
            assert await store.complete(job.id, name, "v.mp4", {}, lease=job.lease)
            taken.append((job.id, job.lease, asked, answered, time.time()))

    async def run() -> dict[str, list[tuple[int, int, float, float, float]]]:
        names = [f"{host}-gpu{n}" for n in range(WORKERS_PER_HOST)]
        stores = [await open_store(_settings(data_dir, url)) for _ in names]
        for store in stores:
            await store.get(1)  # connections open before the start, so the timing is the claims'
        ready.put((host, True))
        await asyncio.to_thread(start.wait)
        try:
            taken = await asyncio.gather(*(worker(store, name) for store, name in zip(stores, names, strict=True)))
        finally:
            for store in stores:
                await store.close()
        return dict(zip(names, taken, strict=True))

    results.put((host, asyncio.run(run())))


async def _enqueue_all(store) -> dict[int, str]:
    """Person by person (all of p0's jobs, then p1's, ...), the order first-come-first-served is least fair in."""
    png, owners = _png(), {}
    for person in range(PEOPLE):
        user = f"p{person}"
        for _ in range(JOBS_EACH):
            job = NewJob(platform="telegram", chat_id=f"c{person}", user_id=user, prompt="a cat", params=JobParams())
            owners[(await store.enqueue(job, png)).job_id] = user
    return owners


def _fair_place(job_id: int, waiting: dict[str, list[int]], running: dict[str, int]) -> int:
    """Where `job_id` stands in the fair order (the stores' rule: a person's n-th waiting job, counting their
    running ones, goes after everyone's (n-1)-th; then by id) given who waits and who runs."""
    order = sorted((place + 1 + running[person], queued) for person, ids in waiting.items()
                   for place, queued in enumerate(ids[:ORDER_SLACK]))
    return next((n for n, (_, queued) in enumerate(order) if queued == job_id), len(order))


def _latest_state(claim, claims, owners: dict[int, str]) -> tuple[dict[str, list[int]], dict[str, int]]:
    """Who waits and who runs at the latest moment `claim` may have chosen (just before its answer): every other
    claim answered by then was taken, every completion answered by then was done."""
    answered = claim[3]
    taken = {other[0] for other in claims if other[3] < answered and other[0] != claim[0]}
    done = {other[0] for other in claims if other[4] < answered}
    waiting: dict[str, list[int]] = defaultdict(list)
    for job_id in sorted(owners):
        if job_id not in taken:
            waiting[owners[job_id]].append(job_id)
    running: dict[str, int] = defaultdict(int)
    for job_id in taken - done:
        running[owners[job_id]] += 1
    return waiting, running


def _fair_order_misses(claims, owners: dict[int, str]) -> tuple[list[tuple[int, int]], int]:
    """Replays the claims in the order they were asked for and checks each against the fair rule. A claim chose
    somewhere between its asking and its answer (a process may stall in between while the others go on), so it
    passes when the job it got is among the first ORDER_SLACK of the fair order at either end: with what had
    been answered when it asked, or with what had been answered when it was answered. Returns (job id, place)
    of the claims that passed at neither end, and the worst place overall."""
    waiting: dict[str, list[int]] = defaultdict(list)
    for job_id in sorted(owners):
        waiting[owners[job_id]].append(job_id)
    completions = sorted((done, job_id) for job_id, _, _, _, done in claims)
    running: dict[str, int] = defaultdict(int)
    applied, misses, worst = 0, [], 0
    for claim in sorted(claims, key=lambda claim: claim[2]):
        job_id, asked = claim[0], claim[2]
        while applied < len(completions) and completions[applied][0] < asked:
            running[owners[completions[applied][1]]] -= 1
            applied += 1
        place = _fair_place(job_id, waiting, running)
        if place >= ORDER_SLACK:
            place = min(place, _fair_place(job_id, *_latest_state(claim, claims, owners)))
        worst = max(worst, place)
        if place >= ORDER_SLACK:
            misses.append((job_id, place))
        waiting[owners[job_id]].remove(job_id)
        running[owners[job_id]] += 1
    return misses, worst


async def test_1000_jobs_from_200_people_over_4_workers_on_2_hosts(tmp_path, postgres_url):
    store = await open_store(_settings(str(tmp_path / "frontend"), postgres_url))
    try:
        owners = await _enqueue_all(store)
        assert len(owners) == PEOPLE * JOBS_EACH
        ctx = multiprocessing.get_context("spawn")
        results, ready, start = ctx.Queue(), ctx.Queue(), ctx.Event()
        procs = [ctx.Process(target=_host, args=(postgres_url, str(tmp_path / f"host{h}"), f"host{h}", ready, start,
                                                 results)) for h in range(HOSTS)]
        for proc in procs:
            proc.start()
        collect_answers(ready, procs, timeout=60)
        started = time.perf_counter()
        start.set()
        hosts = collect_answers(results, procs, timeout=60)
        elapsed = time.perf_counter() - started
        for proc in procs:
            proc.join(timeout=30)

        claims = [claim for workers in hosts.values() for taken in workers.values() for claim in taken]
        claimed_ids = [claim[0] for claim in claims]
        doubles = len(claimed_ids) - len(set(claimed_ids))
        lost = set(owners) - set(claimed_ids)
        jobs = [await store.get(job_id) for job_id in sorted(owners)]
        misses, worst = _fair_order_misses(claims, owners)
        per_worker = {name: len(taken) for workers in hosts.values() for name, taken in workers.items()}
        print(f"\nPostgreSQL, {HOSTS} hosts x {WORKERS_PER_HOST} workers: {len(claims)} claims and completions in "
              f"{elapsed:.2f} s, {len(claims) / elapsed:.0f} a second; per worker {per_worker}; doubles {doubles}, "
              f"lost {len(lost)}; worst place in the fair order at a claim: {worst} (slack {ORDER_SLACK}), "
              f"{len(misses)} outside it")

        assert doubles == 0 and not lost
        assert {claim[1] for claim in claims} == {1}  # no job was ever claimed a second time
        assert {job.state for job in jobs} == {JobState.DONE}
        assert all(sum(len(taken) for taken in workers.values()) for workers in hosts.values())  # both hosts worked
        # A process descheduled for long between asking and its answer defeats any replay: on busy 2-core CI machines
        # 7 and 14 of 1,000 claims fell outside, up to 153 places out, while another test process shared the cores.
        # First come, first served puts 602 of 1,000 outside (measured with fair_queue off), so 5% still tells the
        # two apart with room to spare.
        assert len(misses) <= len(claims) // 20, misses
    finally:
        await store.close()

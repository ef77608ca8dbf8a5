"""benchmarks/worker_jobs.py's harness on the CPU with the tiny models: the real worker renders the queued jobs
back to back and the figures it reports hang together."""

from __future__ import annotations

import pytest
from helpers import worker_settings

from benchmarks.worker_jobs import PlacedModels, run_jobs
from engine.worker import ModelCache
from storage.jobs import JobParams

PARAMS = JobParams(seconds=1.2, resolution=64, steps=3, upload_limits=(10**9,))


async def test_jobs_back_to_back_report_each_job_and_the_rate(tmp_path, tiny_models_dir):
    settings = worker_settings(tmp_path, tiny_models_dir, engine_warm_up=False)
    *jobs, summary = await run_jobs(settings, ModelCache(settings), 3, PARAMS)
    assert [job["job"] for job in jobs] == [1, 2, 3]
    assert {job["person"] for job in jobs} == {"person0", "person1"}
    for job in jobs:
        assert 0 <= job["claimed_to_first_step_s"] < job["claimed_to_done_s"]
        assert 0 < job["sampling_s"] + job["decode_s"] <= job["claimed_to_done_s"] + 0.01
    assert summary["jobs"] == 3 and summary["span_s"] >= max(job["claimed_to_done_s"] for job in jobs)
    assert 0 < summary["ratio"] <= 1
    assert summary["jobs_per_hour"] == pytest.approx(3 * 3600 / summary["span_s"], rel=0.01)  # span rounded
    assert len(summary["next_claimed_before_last_done_s"]) == 2


async def test_placed_models_are_what_the_worker_renders_with(tmp_path, tiny_models_dir, original_models):
    settings = worker_settings(tmp_path, tiny_models_dir, engine_warm_up=True, render_resolution=64)
    cache = PlacedModels(settings, original_models)
    *jobs, summary = await run_jobs(settings, cache, 1, PARAMS)
    assert cache.get("original") is original_models and summary["start_up_s"] >= 0
    assert jobs[0]["sampling_s"] > 0


async def test_no_jobs_measures_the_warm_up_alone_as_often_as_run(tmp_path, tiny_models_dir, original_models):
    settings = worker_settings(tmp_path, tiny_models_dir, engine_warm_up=True, render_resolution=64)
    runs = [await run_jobs(settings, PlacedModels(settings, original_models), 0, PARAMS) for _ in range(2)]
    for [record] in runs:
        assert record["summary"] == "warm_up" and record["start_up_s"] > 0
        assert record["compile_cache"].startswith("warmed up in")


def test_the_script_runs_end_to_end_on_the_tiny_models(tmp_path, tiny_models_dir):
    """`--tiny`: main()'s own path (settings, the plan's placement, the worker) on the CPU, so the GPU run
    cannot fail on its plumbing."""
    from benchmarks.worker_jobs import main

    out = tmp_path / "out.jsonl"
    *jobs, summary = main(["--tiny", str(tiny_models_dir), "--jobs", "2", "--seconds", "1.2", "--steps", "2",
                           "--resolution", "64", "--work", str(tmp_path / "work"), "--out", str(out)])
    assert len(jobs) == 2 and summary["jobs"] == 2 and summary["start_up_s"] >= 0
    assert len(out.read_text().splitlines()) == 3

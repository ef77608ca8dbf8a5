"""benchmarks/multi_gpu.py's rounds on the CPU: the serve's worker slots as separate `python -m engine.worker`
processes on the tests' tiny models, one worker and then two, and the figures each round reports."""

from __future__ import annotations

import json

from benchmarks.multi_gpu import main


def test_rounds_of_one_and_two_workers_report_jobs_workers_and_the_ratio(tmp_path, tiny_models_dir):
    out = tmp_path / "out.jsonl"
    lone, pair = main(["--device", "cpu", "--models", str(tiny_models_dir), "--rounds", "1,all", "--workers", "2",
                       "--jobs", "3", "--seconds", "1", "--steps", "2", "--resolution", "64", "--no-warm-up",
                       "--work", str(tmp_path / "work"), "--out", str(out), "--timeout", "300"])
    assert [w["name"] for w in lone["workers"]] == ["cpu0"]
    assert [w["name"] for w in pair["workers"]] == ["cpu0", "cpu1"]
    for record in (lone, pair):
        assert record["every_job_done_once"] and record["claimed_in_fair_order"]
        assert [job["person"] for job in record["jobs"]] == ["person0", "person1", "person0"]
        assert set(record["workers_used"]) <= {w["name"] for w in record["workers"]}
        assert record["jobs_per_hour"] > 0 and record["span_s"] > 0
        assert all(w["peak_rss_gb"] and w["seconds_per_step"] for w in record["workers"]
                   if w["name"] in record["workers_used"])
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line.get("round", line.get("summary")) for line in lines] == ["1", "all", "all vs 1"]
    assert lines[-1]["jobs_per_hour_ratio"] == round(pair["jobs_per_hour"] / lone["jobs_per_hour"], 3)

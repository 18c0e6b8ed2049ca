"""Load: 20 versions registered in a burst are each gated exactly once and end final; the wall
time and the worker's peak memory are measured (and kept in out/reliability_load.json).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from tests.integration import wait_for_statuses
from tests.reliability.conftest import (
    LOAD_VERSIONS,
    META_TAGS,
    REPO_ROOT,
    Models,
    RssSampler,
    Sources,
    Tally,
    Worker,
    unique,
    validation_runs,
    verdict_runs,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]
RESULTS = REPO_ROOT / "out" / "reliability_load.json"


def test_burst_of_versions_each_gated_exactly_once(worker: Worker, rel_registry: Any, sources: Sources,
                                                   models: Models, tally: Tally) -> None:
    name = unique("load")
    # every 4th version is the untrained model (Rejected), the others the trained one (Approved)
    kinds = ["bad" if i % 4 == 3 else "good" for i in range(LOAD_VERSIONS)]
    sources.source("good", {"model.pt": models.good})
    sources.source("bad", {"model.pt": models.bad})
    with RssSampler(worker.pid) as rss:
        t0 = time.monotonic()
        versions = {sources.register(name, kind, None, META_TAGS): kind for kind in kinds}
        burst_s = time.monotonic() - t0
        tally.load_registered = len(versions)
        for v, kind in versions.items():
            tally.expect(name, v, "Approved" if kind == "good" else "Rejected")
        done = wait_for_statuses(rel_registry, name, dict.fromkeys(versions, t0), timeout_s=1500)
        wall_s = time.monotonic() - t0
    problems = []
    once = 0
    for v, kind in versions.items():
        info = done[v][0]
        runs = verdict_runs(name, v, wait_s=60)
        stored = validation_runs(rel_registry, name, v)
        expected = "Approved" if kind == "good" else "Rejected"
        if len(runs) == 1 and len(stored) == 1 and info.claim == 1:
            once += 1
        if info.status.value != expected or len(runs) != 1 or len(stored) != 1 or info.claim != 1:
            problems.append(f"v{v} ({kind}): {info.status} claim {info.claim}, {len(runs)} verdict runs, "
                            f"{len(stored)} validation runs: {info.reason}")
    tally.load_gated_once = once
    figures = {
        "versions": len(versions), "registration_burst_s": round(burst_s, 2),
        "wall_time_s": round(wall_s, 1), "per_version_s": round(wall_s / len(versions), 1),
        "worker_peak_rss_MiB": round(rss.peak_tree / 2**20), "worker_peak_rss_one_process_MiB":
        round(rss.peak_process / 2**20), "rss_samples": rss.samples,
        "max_gates": 2, "md": "2 molecules x 60 steps, 1 replica",
        "approved": sum(1 for v in versions if done[v][0].status.value == "Approved"),
        "rejected": sum(1 for v in versions if done[v][0].status.value == "Rejected"),
    }
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(figures, indent=1))
    tally.notes.append(f"load: {len(versions)} versions in {wall_s:.0f} s ({wall_s / len(versions):.1f} s per "
                       f"version), worker peak RSS {figures['worker_peak_rss_MiB']} MiB (whole process tree), "
                       f"{figures['worker_peak_rss_one_process_MiB']} MiB (largest process)")
    print(json.dumps(figures))
    assert not problems, "\n".join(problems)
    assert Path(RESULTS).is_file()

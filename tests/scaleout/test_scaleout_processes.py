"""The gate's per-molecule MD in worker processes (``MDGATE_TASK_RUNNER=processes``) through a
real gate: the same model registered twice, one version gated with the default local runner
(threads), the other with worker processes, each by ``mdgate gate`` in its own process against
the session's MLflow and Prefect servers. The verdict and every per-molecule figure must be the
local run's (both gates run the same two lanes of four molecules), and every molecule must be in
a completed ``md-<molecule>+...`` task run of the gate.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.integration import ModelFile, Stack, record_timing
from tests.scaleout.test_scaleout_dask import N_MOLECULES, comparable, eight_molecules, gate, results_json  # noqa: F401

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_md_in_worker_processes_gives_the_local_verdict(stack: Stack, registry: Any, good_model: ModelFile,
                                                        eight_molecules: Path, tmp_path: Path) -> None:  # noqa: F811
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from registry import Status
    from registry.register import register_potential

    name = f"proc-painn-{uuid.uuid4().hex[:6]}"
    tag = f"mdgate-gpu-{uuid.uuid4().hex[:6]}"
    local_v = register_potential(registry, good_model.path, name, meta=good_model.meta).version
    proc_v = register_potential(registry, good_model.path, name, meta=good_model.meta).version
    rc_local, wall_local, out_local = gate(stack, eight_molecules, name, local_v, tag, MDGATE_TASK_RUNNER="local")
    rc_proc, wall_proc, out_proc = gate(stack, eight_molecules, name, proc_v, tag, MDGATE_TASK_RUNNER="processes")
    assert rc_local in (0, 1), out_local
    assert rc_proc == rc_local, out_proc
    local, proc = registry.get_version(name, local_v), registry.get_version(name, proc_v)
    assert local.status in (Status.APPROVED, Status.REJECTED) and proc.status == local.status, \
        (local.reason, proc.reason)
    r_local = results_json(registry, local, tmp_path / "local")
    r_proc = results_json(registry, proc, tmp_path / "proc")
    assert comparable(r_proc) == comparable(r_local)
    with get_client(sync_client=True) as client:
        tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[proc.flow_run])))
    md = [t for t in tasks if t.name.startswith("md-")]
    assert len(md) == 2 and all(t.state.is_completed() for t in md), [(t.name, t.state.name) for t in md]
    lanes = [t.name[len("md-"):].split("+") for t in md]
    assert sorted(n for lane in lanes for n in lane) == sorted(m["name"] for m in r_proc["molecules"])
    assert len(r_proc["molecules"]) == N_MOLECULES
    record_timing("processes_gate_wall_s", wall_proc)
    record_timing("threads_gate_wall_s", wall_local)

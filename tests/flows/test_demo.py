"""The demo path end to end with the smallest settings: `mdgate demo` starts `mdgate serve` (and
with it MLflow and Prefect), registers a teacher and its students (one with direct forces), every
version ends with a final status and a report, the direct-force student is Rejected with its
deciding check named, and the printed table fits 100 columns.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from tests.mdgate.test_direct_forces import build_direct
from tests.models import MODEL_META, QUICK_STAGES, build_painn

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def test_demo_gates_teacher_and_students(tmp_path: Path, small_set, atomrefs: torch.Tensor, monkeypatch) -> None:
    from flows.demo import MODEL_NAME, STUDY, run_demo, serve_running, stop_serve
    from flows.demo_table import render_study
    from flows.servers import free_port
    from flows.settings import load_settings
    from registry import Registry, Status
    from registry.artifacts import registered_metadata

    models = tmp_path / "models"
    models.mkdir()
    for k, (stem, _) in enumerate(STUDY):  # distinct (untrained) models, largest first
        torch.manual_seed(k)
        model = build_direct(16, 2, seed=k) if stem.endswith("_direct") else build_painn(32 - 4 * k, 2, atomrefs)
        torch.save(model, models / f"{stem}.pt")
        (models / f"{stem}.json").write_text(json.dumps(MODEL_META))
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({**QUICK_STAGES, "md": {"n_steps": 40},
                                      "molecules": str(small_set.molecules), "reference": str(small_set.reference)}))
    tracking_uri, prefect_api_url = f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}/api"
    env = {
        "MLFLOW_TRACKING_URI": tracking_uri, "PREFECT_API_URL": prefect_api_url,
        "MDGATE_HOME": str(tmp_path / "home"), "MDGATE_CONFIG": str(config),
        "MDGATE_TRACKING_URI": tracking_uri, "MDGATE_PREFECT_API_URL": prefect_api_url,
        "MDGATE_WEBHOOK_PORT": str(free_port()), "MDGATE_POLL_S": "1",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    settings = load_settings()
    settings.export_env()
    try:
        table = run_demo(settings, models, timeout_s=900, echo=print)
        assert [row["model"] for row in table] == [stem for stem, _ in STUDY]
        reg = Registry(settings.tracking_uri)
        versions = reg.list_versions(MODEL_NAME)
        assert len(versions) == len(STUDY)
        for v in versions:
            assert v.status is not None and v.status.is_final, (v.version, v.status, v.reason)
            assert v.report and v.reason
        assert all(row["verdict"] in {s.value for s in (Status.APPROVED, Status.REJECTED, Status.ERROR)}
                   for row in table)
        assert all(Path(row["report"]).is_file() for row in table)
        direct = next(row for row in table if row["model"].endswith("_direct"))
        assert direct["verdict"] == Status.REJECTED.value and direct["deciding check"] and direct["why"]
        assert max(len(line) for line in render_study(table).splitlines()) <= 100
        # students name the teacher as their parent; a re-run registers nothing new
        parents = {v.version: registered_metadata(reg, v).get("mdgate.parent") for v in versions}
        teacher = next(v for v in versions if parents[v.version] is None)
        assert all(parents[v.version] == f"{MODEL_NAME}/{teacher.version}" for v in versions if v is not teacher)
        assert all(len([k for k in v.tags if k.startswith("mdgate.")]) <= 8 for v in versions)  # readable list
        run_demo(settings, models, timeout_s=300, echo=print)
        assert len(reg.list_versions(MODEL_NAME)) == len(STUDY)
    finally:
        stop_serve(settings)
        assert not serve_running(settings)

"""deployments/prefect.yaml describes the same deployments as ``mdgate serve``."""

from __future__ import annotations

from pathlib import Path

import yaml
from prefect.flows import load_flow_from_entrypoint

from flows.settings import DEPLOYMENT, load_settings

REPO = Path(__file__).resolve().parents[2]


def test_prefect_yaml_matches_serve() -> None:
    spec = yaml.safe_load((REPO / "deployments" / "prefect.yaml").read_text())
    deployments = spec["deployments"]
    flows = {}
    for d in deployments:
        assert d["name"] == DEPLOYMENT and d["work_pool"]["name"] == "mdgate"
        flow = load_flow_from_entrypoint(str(REPO / d["entrypoint"]))
        flows[flow.name] = d
    settings = load_settings()
    assert settings.gate_deployment.split("/")[0] in flows
    assert "schedules" not in flows["gate-model-version"]
    assert flows["sweep-registry"]["schedules"] == [{"interval": 60}]
    [pull] = spec["pull"]
    assert pull["prefect.deployments.steps.set_working_directory"]["directory"] == "{{ $MDGATE_REPO }}"

"""The deployment files of deployments/ (deployments/README.md): what can be checked without
Docker or a Kubernetes cluster.

Static: the JSON and YAML parse; every placeholder of the Kubernetes base job template has a
variable; the gate pods request ``nvidia.com/gpu``; the manifests, the Prefect project files,
the systemd units and the Dockerfile agree on pool, queue, image and paths; the Dockerfile's
requirements step runs on this pyproject.toml.

Against a Prefect server of its own (not the session's, whose gate deployment ``mdgate serve``
owns): ``prefect work-pool create --type kubernetes --base-job-template`` and ``--type process``,
the work queues and tag limit of the README, ``prefect deploy`` of both project files, and the
Kubernetes Job the worker would create for each deployment, rendered by prefect-kubernetes.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deployments"
TEMPLATE = DEPLOY / "k8s-base-job-template.json"
BIN = Path(sys.executable).parent
PLACEHOLDER = re.compile(r"\{\{\s*([a-zA-Z_][\w]*)\s*\}\}")


def placeholders(value: Any) -> set[str]:
    """Names of the ``{{ name }}`` placeholders anywhere in a JSON value."""
    if isinstance(value, dict):
        return set().union(*(placeholders(v) for v in value.values())) if value else set()
    if isinstance(value, list):
        return set().union(*(placeholders(v) for v in value)) if value else set()
    return set(PLACEHOLDER.findall(value)) if isinstance(value, str) else set()


def container(manifest: dict[str, Any]) -> dict[str, Any]:
    """The first container of a Job or Deployment manifest."""
    return manifest["spec"]["template"]["spec"]["containers"][0]


def documents(path: Path) -> dict[str, dict[str, Any]]:
    """``Kind/name`` → manifest of a multi-document YAML file."""
    return {f"{d['kind']}/{d['metadata']['name']}": d for d in yaml.safe_load_all(path.read_text()) if d}


# ----------------------------------------------------------------------------- static


def test_k8s_template_variables_and_gpu_request() -> None:
    template = json.loads(TEMPLATE.read_text())
    assert set(template) == {"job_configuration", "variables"}
    variables = template["variables"]["properties"]
    used = placeholders(template["job_configuration"])
    assert used <= set(variables), used - set(variables)
    assert set(variables) - used == set(), "variables no placeholder uses"
    job = template["job_configuration"]["job_manifest"]
    assert job["kind"] == "Job" and job["apiVersion"] == "batch/v1"
    resources = container(job)["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == "{{ gpu_count }}"
    assert resources["requests"]["nvidia.com/gpu"] == "{{ gpu_count }}"  # extended resources: request = limit
    assert variables["gpu_count"]["default"] == 1 and variables["gpu_count"]["minimum"] == 0
    assert variables["namespace"]["default"] == "mdgate"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in \
        variables["tolerations"]["default"]
    # every default matches its own declared type
    types = {"string": str, "integer": int, "boolean": bool, "object": dict, "array": list}
    for name, spec in variables.items():
        if "type" in spec and "default" in spec:
            assert isinstance(spec["default"], types[spec["type"]]), name


def test_k8s_files_agree() -> None:
    project = yaml.safe_load((DEPLOY / "prefect-k8s.yaml").read_text())
    variables = json.loads(TEMPLATE.read_text())["variables"]["properties"]
    pools = {d["work_pool"]["name"] for d in project["deployments"]}
    assert pools == {"mdgate-k8s"}
    queues = {d["entrypoint"]: d["work_pool"]["work_queue_name"] for d in project["deployments"]}
    assert queues == {"flows/gate.py:gate_model_version": "gpu", "flows/sweep.py:sweep_registry": "cpu"}
    for d in project["deployments"]:
        assert set(d["work_pool"]["job_variables"]) <= set(variables), d["name"]
        assert (REPO / d["entrypoint"].split(":")[0]).is_file()
    [pull] = project["pull"]
    assert pull["prefect.deployments.steps.set_working_directory"]["directory"] == "/opt/mdgate"
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert "WORKDIR /opt/mdgate" in dockerfile and "COPY flows ./flows" in dockerfile
    worker = documents(DEPLOY / "k8s-worker.yaml")
    args = container(worker["Deployment/prefect-worker"])["args"]
    assert args[:3] == ["prefect", "worker", "start"] and args[args.index("--pool") + 1] == "mdgate-k8s"
    assert args[args.index("--type") + 1] == "kubernetes"
    role = worker["Role/prefect-worker"]
    assert any("jobs" in r["resources"] and "create" in r["verbs"] for r in role["rules"])
    assert worker["RoleBinding/prefect-worker"]["subjects"][0]["name"] == "prefect-worker"
    # the gate pods read the same ConfigMap (MLflow URL, settings) and the Secret the README creates
    assert variables["env_config_map"]["default"] == "mdgate-config" and "ConfigMap/mdgate-config" in worker
    assert variables["env_secret"]["default"] == "mdgate-env"
    assert "MLFLOW_TRACKING_URI" in worker["ConfigMap/mdgate-config"]["data"]
    env = {e["name"]: e["value"] for e in container(worker["Deployment/prefect-worker"])["env"]}
    assert env["PREFECT_INTEGRATIONS_KUBERNETES_OBSERVER_NAMESPACES"] == variables["namespace"]["default"]
    hook = documents(DEPLOY / "k8s-webhook.yaml")
    receiver = container(hook["Deployment/mdgate-webhook"])
    assert receiver["args"] == ["mdgate", "serve", "--receiver-only", "--no-start-servers"]
    port = next(e["value"] for e in receiver["env"] if e["name"] == "MDGATE_WEBHOOK_PORT")
    assert hook["Service/mdgate-webhook"]["spec"]["ports"][0]["port"] == int(port)
    assert {d["metadata"]["namespace"] for d in hook.values()} == {"mdgate"}


def test_process_pool_and_dask_units_agree() -> None:
    project = yaml.safe_load((DEPLOY / "prefect.yaml").read_text())
    pool = {d["work_pool"]["name"] for d in project["deployments"]}
    unit = (DEPLOY / "process-pool" / "mdgate-worker@.service").read_text()
    [exec_start] = [line for line in unit.splitlines() if line.startswith("ExecStart=")]
    assert f"--pool {pool.pop()} --type process --limit 1" in exec_start
    assert "Environment=CUDA_VISIBLE_DEVICES=%i" in unit
    env_file = (DEPLOY / "process-pool" / "mdgate.env.example").read_text()
    assert re.search(r"^MDGATE_MD_PARALLEL=1$", env_file, re.M)
    worker = (DEPLOY / "dask" / "dask-worker@.service").read_text()
    assert "--nthreads 1 --resources GPU=1" in worker and "CUDA_VISIBLE_DEVICES=%i" in worker
    assert '{"GPU": 1}' in env_file  # what the gates ask the Dask workers for


def test_dockerfile_requirements_step_runs_on_this_project(tmp_path: Path) -> None:
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"^FROM python:\$\{PYTHON_VERSION\}-slim", dockerfile, re.M)
    assert "ARG PYTHON_VERSION=3.12" in dockerfile
    script = dockerfile.split("RUN python - <<'EOF' > /tmp/requirements.txt\n", 1)[1].split("\nEOF\n", 1)[0]
    (tmp_path / "pyproject.toml").write_bytes((REPO / "pyproject.toml").read_bytes())
    out = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, check=True)
    requirements = out.stdout.split()
    for pinned in ("torch==", "prefect==", "mlflow==", "prefect-dask==", "psycopg2-binary==", "prefect-kubernetes=="):
        assert any(r.startswith(pinned) for r in requirements), pinned
    # what the image copies is in the build context the .dockerignore leaves
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().split()
    for src in re.findall(r"^COPY (\S+)", dockerfile, re.M):
        assert (REPO / src).exists() and (f"!{src}/" in ignore or f"!{src}" in ignore), src


# ----------------------------------------------------------------------------- on a Prefect server


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, str]]]:
    """A Prefect server (SQLite) of this module, and the environment of CLI calls against it."""
    from flows.servers import free_port, start_prefect_server

    home = tmp_path_factory.mktemp("deploy_prefect")
    server = start_prefect_server(home, port=free_port(), ui=False)
    try:
        server.wait_up(240)
        env = {**os.environ, "PREFECT_API_URL": server.url, "PREFECT_HOME": str(home / "cli"),
               "MDGATE_REPO": str(REPO), "MDGATE_IMAGE": "registry.example.com/mdgate:test"}
        yield server.url, env
    finally:
        server.stop()


def prefect_cli(env: dict[str, str], *args: str) -> str:
    r = subprocess.run([str(BIN / "prefect"), *args], env=env, cwd=REPO, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, f"prefect {' '.join(args)}:\n{r.stdout}\n{r.stderr}"
    return r.stdout


@contextlib.contextmanager
def client_of(url: str) -> Iterator[Any]:
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: url}), get_client(sync_client=True) as client:
        yield client


@pytest.mark.integration
def test_readme_commands_create_pools_and_deployments(prefect_server: tuple[str, dict[str, str]]) -> None:
    pytest.importorskip("prefect_kubernetes", reason="the kubernetes extra is not installed")
    url, env = prefect_server
    # Kubernetes (deployments/README.md, "Kubernetes")
    prefect_cli(env, "work-pool", "create", "mdgate-k8s", "--type", "kubernetes",
                "--base-job-template", str(TEMPLATE))
    prefect_cli(env, "work-queue", "create", "gpu", "--pool", "mdgate-k8s", "--limit", "8")
    prefect_cli(env, "work-queue", "create", "cpu", "--pool", "mdgate-k8s")
    prefect_cli(env, "concurrency-limit", "create", "mdgate-gpu", "8")
    prefect_cli(env, "--no-prompt", "deploy", "--all", "--prefect-file", "deployments/prefect-k8s.yaml")
    with client_of(url) as client:
        k8s = client.read_work_pool("mdgate-k8s")
        assert k8s.type == "kubernetes" and k8s.base_job_template == json.loads(TEMPLATE.read_text())
        queues = {q.name: q for q in client.read_work_queues(work_pool_name="mdgate-k8s")}
        assert queues["gpu"].concurrency_limit == 8 and queues["cpu"].concurrency_limit is None
        assert client.read_concurrency_limit_by_tag("mdgate-gpu").concurrency_limit == 8
        by_queue = {d.work_queue_name: d for d in client.read_deployments()}
    assert set(by_queue) == {"gpu", "cpu"} and by_queue["cpu"].schedules and not by_queue["gpu"].schedules
    assert {d.work_pool_name for d in by_queue.values()} == {"mdgate-k8s"}
    jobs = {q: render_job(url, k8s.base_job_template, d.job_variables) for q, d in by_queue.items()}
    gate, sweep = container(jobs["gpu"]), container(jobs["cpu"])
    assert gate["image"] == sweep["image"] == "registry.example.com/mdgate:test"
    assert gate["resources"]["limits"]["nvidia.com/gpu"] == 1 and sweep["resources"]["limits"]["nvidia.com/gpu"] == 0
    assert {"name": "MDGATE_MD_PARALLEL", "value": "1"} in gate["env"]
    assert gate["args"] == ["prefect", "flow-run", "execute"]
    assert jobs["gpu"]["metadata"]["namespace"] == "mdgate"
    assert jobs["cpu"]["spec"]["template"]["spec"]["tolerations"] == []

    # bare-metal GPU nodes: the process pool (deployments/README.md, "Bare-metal GPU nodes"). The
    # same two deployments: deploying this project file moves them to the process pool.
    prefect_cli(env, "work-pool", "create", "mdgate", "--type", "process")
    prefect_cli(env, "--no-prompt", "deploy", "--all", "--prefect-file", "deployments/prefect.yaml")
    with client_of(url) as client:
        assert client.read_work_pool("mdgate").type == "process"
        deployments = client.read_deployments()
    assert {(d.name, d.work_pool_name) for d in deployments} == {("mdgate", "mdgate")} and len(deployments) == 2
    assert all(d.pull_steps == [{"prefect.deployments.steps.set_working_directory": {"directory": str(REPO)}}]
               for d in deployments)


def render_job(url: str, template: dict[str, Any], job_variables: dict[str, Any]) -> dict[str, Any]:
    """The Job manifest the Kubernetes worker would create for a flow run of a deployment."""
    import asyncio
    from uuid import uuid4

    from prefect.client.schemas.objects import FlowRun
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration

    async def render() -> dict[str, Any]:
        config = await KubernetesWorkerJobConfiguration.from_template_and_values(template, job_variables)
        config.prepare_for_flow_run(FlowRun(id=uuid4(), name="gate-test", flow_id=uuid4()))
        return config.job_manifest

    with temporary_settings(updates={PREFECT_API_URL: url}):
        return asyncio.run(render())

"""Bad input: every case ends Error or Rejected with a clear one-line reason on the version (or
on stderr, or in the HTTP answer), and the other versions are left as they were.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
import yaml
from ase.build import molecule as ase_molecule
from ase.io import read, write

from flows.webhook import sign
from mdgate.potentials.remote import namespaces_available
from tests.integration import wait_for_status, wait_for_statuses
from tests.models import NaNModel, build_painn
from tests.reliability.conftest import (
    META_TAGS,
    PREFIX,
    SECRET,
    Models,
    RelStack,
    Sources,
    Tally,
    Worker,
    unique,
    validation_runs,
    verdict_runs,
)
from tests.reliability.rel_models import Canary, HangingModel, InfModel, NoCutoffModel, Payload, RaisingModel

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def saved(obj: Any, folder: Path, name: str) -> bytes:
    path = folder / name
    torch.save(obj, path)
    return path.read_bytes()


def good_module() -> torch.nn.Module:
    from tests.models import GOOD_MODEL

    return torch.load(GOOD_MODEL, weights_only=False)


def one_line(reason: str) -> bool:
    return bool(reason) and "\n" not in reason and len(reason) <= 500


def test_bad_versions_end_error_or_rejected_and_leave_others(
        worker: Worker, rel_registry: Any, rel_stack: RelStack, sources: Sources, models: Models,
        small_set: Any, tally: Tally, tmp_path: Path) -> None:
    name = unique("in")
    good = sources.register(name, "good", {"model.pt": models.good}, META_TAGS)
    tally.expect(name, good, "Approved")
    info, _ = wait_for_status(rel_registry, name, good, timeout_s=300)
    assert info.status.value == "Approved", info.reason
    before = rel_registry.get_version(name, good)

    canary_log = rel_stack.home / "canary-loads.txt"
    payload_marker = tmp_path / "payload-ran.txt"
    state_dict_with_code = tmp_path / "sd"
    state_dict_with_code.mkdir()
    torch.save(Payload(str(payload_marker)), state_dict_with_code / "state_dict.pt")
    (state_dict_with_code / "architecture.json").write_text(json.dumps({
        "representation": {"type": "PaiNN", "n_atom_basis": 8, "n_interactions": 1}, "n_rbf": 20,
        "cutoff_A": 5.0}))
    nocut_tags = {k: v for k, v in META_TAGS.items() if k != "mdgate.cutoff_A"}
    # case → (source key, files, version tags, expected status, reason pattern)
    cases: dict[str, tuple[str, dict[str, bytes] | None, dict[str, str], str, str]] = {
        "corrupt artifact": ("corrupt", {"best_model": b"\x80\x04garbage, not a pickle"}, META_TAGS,
                             "Error", "not a loadable torch model"),
        "truncated artifact": ("truncated", {"model.pt": models.good[: len(models.good) // 2]}, META_TAGS,
                               "Error", "not a loadable torch model"),
        "pickle that is not a model": ("canary", {"model.pt": saved(Canary(str(canary_log)), tmp_path, "c.pt")},
                                       META_TAGS, "Error", r"holds a \w+, not a torch.nn.Module"),
        "state dict with code in it": ("sd-code", {
            "state_dict.pt": (state_dict_with_code / "state_dict.pt").read_bytes(),
            "architecture.json": (state_dict_with_code / "architecture.json").read_bytes()},
            META_TAGS, "Error", "weights_only=True"),
        "model without forces": ("noforces", {"model.pt": saved(build_painn(8, 1, forces=False), tmp_path, "nf.pt")},
                                 META_TAGS, "Error", "no forces output"),
        "model raising in forward": ("raises", {"model.pt": saved(RaisingModel(good_module()), tmp_path, "r.pt")},
                                     META_TAGS, "Error", r"model failed on \w+ \(RuntimeError"),
        "model returning NaN": ("nan", {"model.pt": saved(NaNModel(good_module()), tmp_path, "nan.pt")},
                                META_TAGS, "Rejected", "finite"),
        "model returning inf": ("inf", {"model.pt": saved(InfModel(good_module()), tmp_path, "inf.pt")},
                                META_TAGS, "Rejected", "finite"),
        "model hanging at its first call": ("hang0", {"model.pt": saved(HangingModel(good_module()), tmp_path,
                                                                        "h0.pt")},
                                            META_TAGS, "Error", r"did not return within [\d.]+ s"),
        # its 4th call is in the sanity stage, which runs before MD and has the same hard deadline
        "model hanging after its first calls": ("hang3", {"model.pt": saved(HangingModel(good_module(), after=3),
                                                                            tmp_path, "h3.pt")},
                                                META_TAGS, "Error",
                                                r"(the sanity stage|MD of [\w+]+) did not return within [\d.]+ s"),
        "missing energy unit (empty tag)": ("good", None, {**META_TAGS, "mdgate.energy_unit": ""}, "Error",
                                            r"mdgate\.energy_unit.*empty"),
        "contradictory unit metadata": ("good", None, {**META_TAGS, "mdgate.position_unit": "nm"}, "Error",
                                        r"cutoff.*contradict|contradict.*cutoff"),
        "unknown energy unit": ("good", None, {**META_TAGS, "mdgate.energy_unit": "furlong"}, "Error", "furlong"),
        "cutoff metadata missing": ("nocutoff", {"model.pt": saved(NoCutoffModel(), tmp_path, "nc.pt")},
                                    nocut_tags, "Error", r"no cutoff"),
    }
    versions: dict[str, str] = {}
    for case, (key, files, tags, expected, _) in cases.items():
        versions[case] = sources.register(name, key, files, tags)
        tally.expect(name, versions[case], expected)

    # sets named by the registered model: each case is a model of its own
    garbage = tmp_path / "garbage.extxyz"
    garbage.write_bytes(b"\x00\x01 this is not a structure file\n3\n")
    empty = tmp_path / "empty.extxyz"
    empty.write_bytes(b"")
    frames = read(str(small_set.reference), ":")
    swapped = [f for f in frames if f.info.get("name") == "malonaldehyde"]
    for f in swapped:
        f.info["name"] = "ethanol"
    mismatched = tmp_path / "mismatched_reference.extxyz"
    write(mismatched, swapped + [f for f in frames if f.info.get("name") == "malonaldehyde"])
    sulfur = tmp_path / "sulfur.extxyz"  # an element the suite's models were never trained on
    h2s = ase_molecule("SH2")
    h2s.info["name"] = "h2s"
    write(sulfur, [h2s], format="extxyz")
    set_cases = {
        "element the model never saw": ({"mdgate.molecules": str(sulfur)},
                                        r"elements outside the model's coverage: molecule h2s \(H2S\) has S"),
        "molecules file unreadable": ({"mdgate.molecules": str(garbage)}, r"molecules file"),
        "molecules file empty": ({"mdgate.molecules": str(empty)}, r"molecules file"),
        "reference set with mismatched atoms": ({"mdgate.molecules": str(small_set.molecules),
                                                 "mdgate.reference": str(mismatched)},
                                                r"reference frame of 'ethanol' has atoms"),
    }
    set_versions: dict[str, tuple[str, str]] = {}
    for case, (model_tags, _) in set_cases.items():
        model = unique("set")
        rel_registry.client.create_registered_model(model, tags=model_tags)
        set_versions[case] = (model, sources.register(model, "good", None, META_TAGS))
        tally.expect(model, set_versions[case][1], "Error")

    t0 = time.monotonic()
    done = wait_for_statuses(rel_registry, name, dict.fromkeys(versions.values(), t0), timeout_s=600)
    for model, version in set_versions.values():
        done[f"{model}/{version}"] = wait_for_status(rel_registry, model, version, timeout_s=300)

    failures = []
    for case, (_, _, _, expected, pattern) in cases.items():
        info, _ = done[versions[case]]
        ok = (info.status is not None and info.status.value == expected and one_line(info.reason)
              and re.search(pattern, info.reason) is not None and info.claim == 1
              and len(verdict_runs(name, versions[case], wait_s=60)) == 1)
        tally.bad_inputs[case] = ok
        if not ok:
            failures.append(f"{case}: {info.status} {info.reason!r}")
    for case, (model, version) in set_versions.items():
        info, _ = done[f"{model}/{version}"]
        ok = (info.status is not None and info.status.value == "Error" and one_line(info.reason)
              and re.search(set_cases[case][1], info.reason) is not None)
        tally.bad_inputs[case] = ok
        if not ok:
            failures.append(f"{case}: {info.status} {info.reason!r}")
    # an Error keeps its report: the validation run holds it
    for case in ("corrupt artifact", "model hanging at its first call"):
        info, _ = done[versions[case]]
        assert info.report and info.validation_run, case
        assert len(validation_runs(rel_registry, name, versions[case])) == 1
    # the canary (a pickle) was loaded in the model process only: the receiver and the gate's own
    # processes never; sandboxed, the model process could not even write its log
    loaders = {int(p) for p in canary_log.read_text().split()} if canary_log.exists() else set()
    assert worker.pid not in loaders, (loaders, worker.pid)
    assert loaders == set() if namespaces_available() is None else loaders, loaders
    # code in a state dict never ran: weights_only refused it
    assert not payload_marker.exists()
    # the first version is untouched
    after = rel_registry.get_version(name, good)
    assert after.tags == before.tags and after.description == before.description
    assert rel_registry.alias_version(name) == good
    assert not failures, "\n".join(failures) + "\n" + worker.tail(30)


BAD_CONFIGS = {
    "malformed YAML": ("md: {n_steps: 60\ncriteria: [", r"malformed YAML"),
    "unknown key in the config": ({"md": {"n_steps": 60, "n_stepz": 10}}, r"md\.n_stepz.*unknown key"),
    "negative time step": ({"md": {"timestep_fs": -0.5}}, r"md\.timestep_fs.*-0\.5"),
    "zero MD steps": ({"md": {"n_steps": 0}}, r"md\.n_steps.*0"),
}


def test_bad_gate_configs_refused_with_one_line_on_stderr(rel_stack: RelStack, worker: Worker, tally: Tally,
                                                          tmp_path: Path) -> None:
    """The service reads its config once at start: ``mdgate serve`` refuses a bad one, on stderr,
    before it starts anything.
    """
    from flows.servers import free_port

    procs = {}
    for case, (content, _) in BAD_CONFIGS.items():
        path = tmp_path / f"{len(procs)}.yaml"
        path.write_text(content if isinstance(content, str) else yaml.safe_dump(content))
        env = worker.env(MDGATE_CONFIG=str(path), MDGATE_WEBHOOK_PORT=str(free_port()),
                         MDGATE_MODELS=f"{PREFIX}never-*")
        procs[case] = subprocess.Popen(
            [str(Path(sys.executable).parent / "mdgate"), "serve", "--no-start-servers"], env=env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True, cwd=tmp_path)
    failures = []
    for case, proc in procs.items():
        try:
            _, err = proc.communicate(timeout=180)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            _, err = proc.communicate()
        lines = [line for line in err.decode(errors="replace").splitlines() if line.strip()]
        errors = [line for line in lines if line.startswith("error: ")]
        ok = (proc.returncode == 2 and len(errors) == 1 and "ready" not in err.decode(errors="replace")
              and re.search(BAD_CONFIGS[case][1], errors[0]) is not None)
        tally.bad_inputs[case] = ok
        if not ok:
            failures.append(f"{case}: exit {proc.returncode}: {lines[-5:]}")
    assert not failures, "\n".join(failures)


def test_bad_webhook_bodies_refused_and_start_nothing(rel_stack: RelStack, worker: Worker, tally: Tally) -> None:
    from prefect.client.orchestration import get_client

    def n_flow_runs() -> int:
        with get_client(sync_client=True) as client:
            return len(client.read_flow_runs(limit=200))

    def post(body: bytes, delivery: str) -> httpx.Response:
        ts = str(int(time.time()))
        return httpx.post(rel_stack.webhook_url, content=body, timeout=30, headers={
            "X-MLflow-Signature": sign(SECRET, delivery, ts, body), "X-MLflow-Timestamp": ts,
            "X-MLflow-Delivery-Id": delivery, "Content-Type": "application/json"})

    before = n_flow_runs()
    oversized = json.dumps({"entity": "model_version", "action": "created",
                            "data": {"name": f"{PREFIX}x", "version": "1", "pad": "x" * 400_000}}).encode()
    cases = {
        "oversized webhook body": (oversized, 413),
        "non-JSON webhook body": (b"model_version.created rel-x 1", 400),
        "webhook body that is not an MLflow event": (json.dumps({"hello": "world"}).encode(), 400),
    }
    failures = []
    for i, (case, (body, status)) in enumerate(cases.items()):
        r = post(body, f"bad-body-{i}")
        reason = r.json().get("error", "") if r.headers.get("content-type", "").startswith("application/json") else ""
        ok = r.status_code == status and one_line(reason)
        tally.bad_inputs[case] = ok
        if not ok:
            failures.append(f"{case}: {r.status_code} {r.text[:200]}")
    time.sleep(2)
    assert n_flow_runs() == before
    assert not failures, failures

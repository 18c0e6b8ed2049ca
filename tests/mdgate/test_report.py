"""The report: Markdown parsed with markdown-it-py (sections, tables), HTML, plots and the
``results.json`` contract, for a Rejected, an Approved and an Error result.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from markdown_it import MarkdownIt

from mdgate.checks.table import CHECKS
from mdgate.config import GateConfig, parse_config
from mdgate.molecules import Molecule
from mdgate.potentials import ModelMeta
from mdgate.report.markdown import write_report
from mdgate.results import Timing, Verdict
from mdgate.runner import assemble, error_result, model_info, validate
from mdgate.stages.md import run_md
from tests.models import QUICK_STAGES, MorsePairPotential, quick, tetrahedron

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@dataclass
class Table:
    """A Markdown table from the token stream, under the heading it follows."""

    heading: str
    header: list[str]
    rows: list[list[str]] = field(default_factory=list)


@dataclass
class Parsed:
    """What the tests read from a Markdown document."""

    headings: list[tuple[int, str]]
    tables: list[Table]
    images: list[str]


def parse(markdown: str) -> Parsed:
    """Headings (level, text), tables and image sources of a Markdown document."""
    tokens = MarkdownIt("commonmark").enable("table").parse(markdown)
    headings: list[tuple[int, str]] = []
    tables: list[Table] = []
    images: list[str] = []
    row: list[str] | None = None
    in_head = False
    for k, tok in enumerate(tokens):
        if tok.type == "heading_open":
            headings.append((int(tok.tag[1]), tokens[k + 1].content))
        elif tok.type == "table_open":
            tables.append(Table(heading=headings[-1][1] if headings else "", header=[]))
        elif tok.type == "thead_open":
            in_head = True
        elif tok.type == "thead_close":
            in_head = False
        elif tok.type == "tr_open":
            row = []
        elif tok.type in ("th_open", "td_open"):
            assert row is not None
            row.append(tokens[k + 1].content.strip())
        elif tok.type == "tr_close":
            assert row is not None
            if in_head:
                tables[-1].header = row
            else:
                tables[-1].rows.append(row)
        elif tok.type == "inline":
            images += [c.attrs["src"] for c in tok.children or [] if c.type == "image"]
    return Parsed(headings, tables, images)


def table_under(parsed: Parsed, heading: str) -> Table:
    found = [t for t in parsed.tables if t.heading == heading]
    assert len(found) == 1, [t.heading for t in parsed.tables]
    return found[0]


@pytest.fixture(scope="module")
def rejected(tmp_path_factory: pytest.TempPathFactory, untrained_model_path: Path, small_set):
    """``validate`` of the untrained PaiNN on the small set, with its report written."""
    out = tmp_path_factory.mktemp("rejected")
    cfg = parse_config({**QUICK_STAGES, "md": {"n_steps": 60, "device": "cpu", "n_replicas": 1},
                        "molecules": str(small_set.molecules), "reference": str(small_set.reference)}, "test")
    result = validate(untrained_model_path, cfg, ModelMeta(), out_dir=out)
    return result, cfg, out


def test_report_files_are_written(rejected) -> None:
    result, _, out = rejected
    assert {p.name for p in out.iterdir()} >= {"report.md", "report.html", "results.json", "plots"}
    for mol in result.molecules:
        png = out / "plots" / f"energy_{mol.name}.png"
        assert png.read_bytes()[:8] == PNG_MAGIC
        assert png.stat().st_size > 5000  # a drawn figure, not an empty canvas
    html = (out / "report.html").read_text()
    assert html.startswith("<!doctype html>")
    assert "<table>" in html and "NOT RECOMMENDED FOR MD" in html
    assert '<img src="plots/energy_ethanol.png"' in html


def test_results_json_holds_the_contract_keys(rejected) -> None:
    result, cfg, out = rejected
    data = json.loads((out / "results.json").read_text())
    assert {"verdict", "reason", "model", "criteria", "molecules", "accuracy", "failed_checks",
            "timing"} <= set(data)
    assert data["verdict"] == "Rejected" == result.verdict.value
    assert data["reason"] == result.reason and data["reason"]
    assert data["model"]["n_parameters"] == result.model.n_parameters > 0
    assert {"parent", "compression_ratio"} <= set(data["model"])
    # The config as applied, and its sha256.
    assert data["criteria"]["config"] == cfg.model_dump(mode="json")
    assert data["criteria"]["sha256"] == cfg.sha256()
    assert data["criteria"]["config"]["md"]["n_steps"] == 60
    assert [m["name"] for m in data["molecules"]] == ["ethanol", "malonaldehyde"]
    for mol in data["molecules"]:
        assert {"formula", "n_atoms", "steps_asked", "summary", "checks", "replicas", "passed"} <= set(mol)
        assert mol["steps_asked"] == 60
        rep = mol["replicas"][0]
        assert {"steps_done", "metrics", "checks", "failure"} <= set(rep)
        # Units live in the metric names.
        assert {"drift_slope_meV_per_atom_per_ps", "max_energy_deviation_meV_per_atom",
                "max_bond_deviation_A", "max_temperature_K"} <= set(rep["metrics"])
        for check in rep["checks"]:
            assert {"name", "value", "bound", "passed", "required", "unit"} <= set(check)
    assert set(data["accuracy"]) >= {"force_r2", "force_mae_eV_per_A", "energy_mae_meV_per_atom", "checks",
                                     "applicable", "n_frames"}
    assert data["accuracy"]["n_frames"] == 40
    assert data["failed_checks"] and all(isinstance(f, str) for f in data["failed_checks"])
    assert data["timing"]["device"] == "cpu" and data["timing"]["total_s"] > 0


def test_report_markdown_has_the_hand_made_reports_sections(rejected) -> None:
    result, _, out = rejected
    parsed = parse((out / "report.md").read_text())
    levels = dict((text, level) for level, text in parsed.headings)
    assert parsed.headings[0] == (1, "MD Validation Report: untrained_painn.pt")
    assert levels["STATUS: NOT RECOMMENDED FOR MD"] == 2
    for section in ("Executive Summary", "Results by Molecule", "Detailed Results",
                    "Accuracy on the Reference Set", "Analysis", "Recommendations", "Conclusion"):
        assert levels.get(section) == 2, section
    assert levels["Validation Results Summary"] == 3
    for mol in result.molecules:
        assert levels.get(mol.name) == 3  # a section per molecule
    order = [text for _, text in parsed.headings]
    assert order.index("Executive Summary") < order.index("Results by Molecule") < order.index("Analysis") \
        < order.index("Recommendations") < order.index("Conclusion")
    # Each failing check is analysed under its own heading.
    for name in {f.split(": ")[1].split(" =")[0] for f in result.failed_checks}:
        assert levels.get(name) == 3, name
    stress = result.stages["stress"].molecules
    survival = ["plots/survival_stress.png"] if any(m.rate and m.rate.n_failed for m in stress) else []
    pes = [f"plots/pes_{m}.png" for m in result.stages["pes"].curves]  # both molecules have torsions
    assert sorted(parsed.images) == sorted([f"plots/energy_{m.name}.png" for m in result.molecules]
                                           + [f"plots/stress_{m.name}.png" for m in stress] + survival + pes)


def test_report_tables_carry_the_measured_values(rejected) -> None:
    result, _, out = rejected
    parsed = parse((out / "report.md").read_text())
    summary = table_under(parsed, "Validation Results Summary")
    assert summary.header == ["Stage", "Check", "Worst value", "Bound", "Passed", "Status"]
    stages = {r[0] for r in summary.rows}
    assert {"NVE", "accuracy", "stress"} <= stages  # every stage that ran, not only NVE
    assert "**Overall Verdict**: **REJECTED**" in (out / "report.md").read_text()
    by_mol = table_under(parsed, "Results by Molecule")
    assert by_mol.header[:4] == ["Molecule", "Formula", "Atoms", "NVE steps"]
    assert [r[0] for r in by_mol.rows] == [m.name for m in result.molecules]
    for row, mol in zip(by_mol.rows, result.molecules, strict=True):
        assert row[1] == mol.formula and row[2] == str(mol.n_atoms)
        assert row[3] == f"{mol.replicas[0].steps_done}/60"
        assert row[-1] == ("PASS" if mol.passed else "FAIL")
    for mol in result.molecules:
        checks = table_under(parsed, mol.name)
        assert checks.header == ["Check", "Value (worst replica)", "Replicas: mean ± std", "Bound", "Status", "Note"]
        assert [r[0] for r in checks.rows] == [CHECKS[c.name].label for c in mol.checks]
    acc = table_under(parsed, "Accuracy on the Reference Set")
    assert acc.rows[-1][0] == "**all**" and acc.rows[-1][1] == "40"


def test_the_summary_table_never_shows_an_unmeasured_check_as_passed(rejected) -> None:
    result, _, out = rejected
    rows = {(r[0], r[1]): r for r in table_under(parse((out / "report.md").read_text()),
                                                  "Validation Results Summary").rows}
    for name in ("completion", "max_temperature_K", "max_bond_deviation_A", "drift_slope_meV_per_atom_per_ps",
                 "max_energy_deviation_meV_per_atom"):
        states = [c.passed for m in result.molecules for r in m.replicas for c in r.checks if c.name == name]
        row = rows[("NVE", CHECKS[name].label)]
        assert row[4] == f"{sum(s is True for s in states)}/{len(states)}", (name, row)
        if False in states:
            assert row[5] == "FAIL", (name, row)
        elif None in states:
            assert row[5].startswith("n/a"), (name, row)
        else:
            assert row[5] == "PASS", (name, row)


def test_an_approved_report(tmp_path: Path) -> None:
    """A conserving, stable potential: every required check passes; the report says so."""
    config = GateConfig.model_validate(quick({"md": {"n_steps": 100, "record_every": 5}}))
    mols = [Molecule("tetra_c", tetrahedron("C4", rattle_A=0.01, seed=1)),
            Molecule("tetra_n", tetrahedron("C2N2", rattle_A=0.01, seed=2))]
    pot = MorsePairPotential()
    molecules = [r.nve for r in run_md(pot, mols, config)]  # type: ignore[arg-type]
    result = assemble(model_info("morse.pt", pot, ModelMeta()), config, molecules, None,  # type: ignore[arg-type]
                      Timing(total_s=1.0, md_s=0.5))
    assert result.verdict == Verdict.APPROVED, result.failed_checks
    write_report(result, tmp_path)
    text = (tmp_path / "report.md").read_text()
    parsed = parse(text)
    order = [t for _, t in parsed.headings]
    assert "STATUS: APPROVED FOR MD" in order
    sections = {"Executive Summary", "Analysis", "Recommendations", "Conclusion", "tetra_c", "tetra_n"}
    assert sections <= set(order)
    rows = table_under(parsed, "Validation Results Summary").rows
    assert "**Overall Verdict**: **APPROVED**" in text
    assert rows and all(r[5] in ("PASS", "PASS (info)", "info") for r in rows)
    assert "No required check failed" in text
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["verdict"] == "Approved" and data["failed_checks"] == [] and data["accuracy"] is None


def test_an_error_report(tmp_path: Path) -> None:
    result = error_result("model file not found: x.pt", "x.pt", GateConfig())
    write_report(result, tmp_path)
    parsed = parse((tmp_path / "report.md").read_text())
    assert [t for _, t in parsed.headings] == [
        "MD Validation Report: x.pt", "STATUS: ERROR: NOT VALIDATED", "Executive Summary", "Conclusion"]
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["verdict"] == "Error" and data["reason"] == "model file not found: x.pt"
    assert data["criteria"]["sha256"] == GateConfig().sha256()
    assert not (tmp_path / "plots").exists()


def test_the_version_description_table_keeps_its_columns(rejected) -> None:
    """The registry's summary table (MLflow renders the version description as Markdown): every
    row has a cell per column, also under headers with a ``|`` in them (``max |E-E0|``).
    """
    from mdgate.checks.table import summary_columns
    from registry.summary import summary_markdown, summary_rows

    result, _, _ = rejected
    [table] = parse(summary_markdown(result)).tables
    rows = summary_rows(result)
    assert table.header == list(rows[0])
    assert "max |E-E0| (meV/atom)" in table.header and any("|" in label for label, _ in summary_columns())
    assert [r[0] for r in table.rows] == [m.name for m in result.molecules]
    for cells, row in zip(table.rows, rows, strict=True):
        assert len(cells) == len(table.header)
        assert cells[table.header.index("Result")] == row["Result"]

"""The engine's command line: ``mdgate validate`` (typer). Errors are one line on stderr;
``--traceback`` for more.

The full ``mdgate`` command (``flows/cli.py``) mounts this command beside the registry and
orchestration commands; this module imports nothing above the engine.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from mdgate.errors import MdgateError

app = typer.Typer(
    name="mdgate",
    help="Gate machine-learned interatomic potentials by running molecular dynamics.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

EXIT_APPROVED, EXIT_REJECTED, EXIT_ERROR = 0, 1, 2


@app.callback()
def _root() -> None:
    """Gate machine-learned interatomic potentials by running molecular dynamics."""


def fail(message: str, code: int = EXIT_ERROR) -> typer.Exit:
    """Print a one-line error to stderr and return the Exit to raise."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def read_meta_file(model: Path, meta_file: Path | None) -> dict:
    """Model metadata from ``--meta-file`` or a ``<model>.json`` sidecar, if there is one."""
    # The engine (torch) is imported when the command runs: `mdgate --help` stays fast.
    from mdgate.potentials.describe import read_sidecar

    data = read_sidecar(model, meta_file)
    if "n_parameters" in data and "parent_n_parameters" not in data and data.get("parent"):
        data.pop("n_parameters")
    return data


@app.command()
def validate(
    model: Annotated[Path, typer.Argument(help="A schnetpack training run folder (best_model + config.yaml: units, "
                                          "keys and cutoff are read from it), or a model file written by "
                                          "torch.save (e.g. schnetpack best_model).")],
    molecules: Annotated[Path | None, typer.Option(help="Validation set (extxyz, ASE db). Default: packaged set.")] = None,
    reference: Annotated[Path | None, typer.Option(help="Reference set with energies/forces for accuracy.")] = None,
    config: Annotated[Path | None, typer.Option(help="Gate config YAML (md, criteria, molecules, reference).")] = None,
    out: Annotated[Path, typer.Option(help="Output folder for report.md/html, results.json, plots.")] = Path("out"),
    device: Annotated[str | None, typer.Option(help="auto | cpu | cuda (overrides the config).")] = None,
    energy_unit: Annotated[str | None, typer.Option(help="Unit of the model's energy output (default: eV).")] = None,
    position_unit: Annotated[str | None, typer.Option(help="Length unit of the model (default: Angstrom).")] = None,
    energy_key: Annotated[str | None, typer.Option(help="Energy output key (default: energy).")] = None,
    forces_key: Annotated[str | None, typer.Option(help="Forces output key (default: forces).")] = None,
    cutoff_a: Annotated[float | None, typer.Option("--cutoff-A", help="Cutoff in Å (default: read from model).")] = None,
    level_of_theory: Annotated[str | None, typer.Option(help="Method the model was trained on.")] = None,
    parent_params: Annotated[int | None, typer.Option(help="Parameter count of the parent model.")] = None,
    meta_file: Annotated[Path | None, typer.Option(help="JSON model metadata (default: MODEL.json if present).")] = None,
    n_steps: Annotated[int | None, typer.Option(help="MD steps (overrides the config).")] = None,
    allow_pickle: Annotated[bool, typer.Option(help="Load torch.save(model) files (their code runs in the model "
                                               "process); --no-allow-pickle for models you do not trust.")] = True,
    model_process: Annotated[str, typer.Option(help="auto (pickles and loaders in a sandboxed model process, "
                                               "weights-only models in-process) | always | never.")] = "auto",
    traceback: Annotated[bool, typer.Option("--traceback", help="Show the full traceback on errors.")] = False,
) -> None:
    """Validate a model file or a schnetpack training run with the validation protocol (sanity, NVE, heat stress, accuracy, oracle); exit 0 Approved, 1 Rejected, 2 error.

    The declared energy unit is verified against the reference forces before MD: a model whose forces
    are a known unit ratio off (e.g. 23.06x: kcal/mol declared as eV) is an error naming the unit.
    """
    # The engine (torch, schnetpack) is imported when the command runs: `mdgate --help` stays fast.
    from mdgate.report.markdown import write_report
    from mdgate.results import Verdict
    from mdgate.runner import error_result
    from mdgate.runner import validate as run_validate

    overrides = {"energy_unit": energy_unit, "position_unit": position_unit, "energy_key": energy_key,
                 "forces_key": forces_key, "cutoff_A": cutoff_a, "level_of_theory": level_of_theory,
                 "parent_n_parameters": parent_params}
    isolation = _isolation(allow_pickle, model_process)
    try:
        cfg = _gate_config(config, molecules, reference, n_steps)
        model, meta = _model_meta(model, meta_file, overrides)
    except MdgateError as e:
        if traceback:
            raise
        raise fail(str(e)) from None
    except Exception as e:  # pydantic errors on metadata
        if traceback:
            raise
        raise fail(f"invalid model metadata: {str(e).splitlines()[0]}") from None

    try:
        with _progress() as progress:
            result = run_validate(model, cfg, meta, out, device, progress, isolation)
    except MdgateError as e:
        if traceback:
            raise
        write_report(error_result(str(e), str(model), cfg, meta), out)
        raise fail(f"{e} (nothing validated; report in {out}/)") from None
    raise typer.Exit(_print_verdict(result, out, Verdict.APPROVED))


def _print_verdict(result: Any, out: Path, approved: Any) -> int:
    """Print the verdict and where its report is; return the exit code."""
    typer.echo(f"{result.verdict.value}: {result.reason}")
    typer.echo(f"report: {out / 'report.md'}  ({result.timing.total_s:.1f} s, "
               f"{result.timing.ms_per_step or 0:.2f} ms/step on {result.timing.device}, "
               f"{result.timing.model_call} model; model ran {result.model.runs_in or 'n/a'})")
    return EXIT_APPROVED if result.verdict == approved else EXIT_REJECTED


def _isolation(allow_pickle: bool, model_process: str) -> Any:
    """The trust policy the options ask for (``--model-process`` checked)."""
    from mdgate.potentials.isolation import Isolation

    if model_process not in ("auto", "always", "never"):
        raise fail(f"--model-process must be auto, always or never (got {model_process!r})")
    return Isolation(allow_pickles=allow_pickle, model_process=model_process)  # type: ignore[arg-type]


def _gate_config(config: Path | None, molecules: Path | None, reference: Path | None, n_steps: int | None) -> Any:
    """The gate config from ``config`` (or the defaults) with the command line's overrides."""
    from mdgate.config import load_config, parse_config

    cfg = load_config(config)
    updates = {k: v for k, v in (("molecules", molecules), ("reference", reference)) if v is not None}
    if not updates and n_steps is None:
        return cfg
    data = cfg.model_dump(mode="json")
    data.update({k: str(v) for k, v in updates.items()})
    if n_steps is not None:
        data["md"]["n_steps"] = n_steps
    return parse_config(data, str(config or "command line"))


def _model_meta(model: Path, meta_file: Path | None, overrides: dict[str, Any]) -> tuple[Path, Any]:
    """The model file and its metadata: the metadata file, then the options, then a training run's
    own config, each source named in errors.
    """
    from mdgate.potentials import ModelMeta

    meta_data = read_meta_file(model, meta_file)
    sources = {k: f"the metadata file {meta_file or 'beside the model'}" for k in meta_data}
    given = {k: v for k, v in overrides.items() if v is not None}
    meta_data.update(given)
    sources.update({k: _OPTION[k] for k in given})
    model, meta_data = _training_run_meta(model, meta_data, sources)
    return model, ModelMeta.model_validate(meta_data)


class _progress:
    """A rich progress bar per molecule on stderr, started at the first MD step."""

    def __enter__(self):
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(
            TextColumn("{task.description:<22}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[state]}"), TimeElapsedColumn(),
            console=Console(stderr=True), transient=False,
        )
        self.tasks: dict[str, int] = {}
        self.started = False
        return self.update

    def update(self, name: str, step: int, n_steps: int, running: bool) -> None:
        if not self.started:
            self.progress.start()
            self.started = True
        if name not in self.tasks:
            self.tasks[name] = self.progress.add_task(name, total=n_steps, state="MD")
        task = self.tasks[name]
        if running:
            self.progress.update(task, completed=step, state="done" if step >= n_steps else "MD")
        elif self.progress.tasks[task].fields.get("state") == "MD":
            self.progress.update(task, state=f"stopped at step {step}")

    def __exit__(self, *exc: object) -> None:
        if self.started:
            self.progress.stop()


#: The ``validate`` option of each metadata key (for messages).
_OPTION = {"energy_unit": "--energy-unit", "position_unit": "--position-unit", "energy_key": "--energy-key",
           "forces_key": "--forces-key", "cutoff_A": "--cutoff-A", "level_of_theory": "--level-of-theory",
           "parent_n_parameters": "--parent-params"}


def _training_run_meta(model: Path, meta_data: dict, sources: dict[str, str]) -> tuple[Path, dict]:
    """For a schnetpack training run folder: its ``best_model`` and the metadata of its
    ``config.yaml`` merged with ``meta_data`` (a contradiction is an error); else unchanged.
    """
    from mdgate.potentials.rundir import is_training_run, merge_meta, read_training_run

    if not is_training_run(model):
        return model, meta_data
    run = read_training_run(model)
    return run.model_path, merge_meta(run, meta_data, sources)


@app.command()
def convert(
    model: Annotated[Path, typer.Argument(help="A schnetpack model written by torch.save (e.g. best_model).")],
    out: Annotated[Path, typer.Argument(help="Folder to write architecture.json + state_dict.pt to.")],
    traceback: Annotated[bool, typer.Option("--traceback", help="Show the full traceback on errors.")] = False,
) -> None:
    """Store a pickled schnetpack model as weights + architecture spec, which loads without running code.

    The pickle is loaded here, in this process: convert only your own files. Its metadata file
    (MODEL.json) is copied to OUT.json, where `mdgate register OUT` and `mdgate validate OUT` find it.
    """
    import shutil

    from mdgate.potentials.describe import sidecar_path
    from mdgate.potentials.schnetpack import load_module
    from mdgate.potentials.spec import save_state_dict_model

    try:
        save_state_dict_model(load_module(model), out)
    except MdgateError as e:
        if traceback:
            raise
        raise fail(str(e)) from None
    written = [f"{out}/"]
    if sidecar_path(model).is_file():
        shutil.copy(sidecar_path(model), sidecar_path(out))
        written.append(str(sidecar_path(out)))
    typer.echo(f"wrote {' and '.join(written)}: weights only, loaded with torch.load(weights_only=True)")


def main() -> None:
    """Entry point for ``python -m mdgate``."""
    app()


if __name__ == "__main__":
    main()

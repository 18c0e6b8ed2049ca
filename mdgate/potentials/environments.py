"""The model's own environment: when a descriptor's ``requirements`` do not fit the engine's
environment, its model process runs in one built from them.

An environment is a virtual environment layered on the engine's: its own ``site-packages``
first (what the requirements install, e.g. ``e3nn==0.4.4`` for ``mace-torch``), then the
engine's (torch, numpy and mdgate itself, which the model process needs, are shared rather
than downloaded again). It is built once per set of requirements and engine (the key hashes
both) under the cache folder, by ``pip``, and reused by every later model with the same
requirements. A build that fails is an Error naming what pip could not install; a half-built
environment is never used (it is marked ready only at the end). Concurrent builds of the same
environment wait for each other (a file lock).

The MD engine never moves into that environment: only the model process does.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import site
import subprocess
import sys
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

from mdgate.errors import ModelLoadError


def unmet(requirements: list[str]) -> list[str]:
    """The requirements the engine's own environment does not satisfy (markers honoured)."""
    out = []
    for text in requirements:
        req = Requirement(text)
        if req.marker is not None and not req.marker.evaluate():
            continue
        try:
            version = metadata.version(req.name)
        except metadata.PackageNotFoundError:
            out.append(text)
            continue
        if req.specifier and not req.specifier.contains(version, prereleases=True):
            out.append(text)
    return out


def cache_root() -> Path:
    """Where environments are kept: ``$MDGATE_ENV_DIR``, else ``$MDGATE_CACHE_DIR/envs``, else
    ``~/.cache/mdgate/envs``.
    """
    if os.environ.get("MDGATE_ENV_DIR"):
        return Path(os.environ["MDGATE_ENV_DIR"])
    base = Path(os.environ["MDGATE_CACHE_DIR"]) if os.environ.get("MDGATE_CACHE_DIR") else \
        Path.home() / ".cache" / "mdgate"
    return base / "envs"


def engine_site_dirs() -> list[str]:
    """The engine's ``site-packages`` folders (the layer under every model environment)."""
    return [p for p in site.getsitepackages() if Path(p).is_dir()]


def env_key(requirements: list[str]) -> str:
    """The environment's key: its requirements (sorted), the interpreter and the engine's layer."""
    data = {"requirements": sorted(requirements), "python": sys.version, "engine": engine_site_dirs()}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def python_of(folder: Path) -> Path:
    """The interpreter of the environment in ``folder``."""
    return folder / "bin" / "python"


def environment(requirements: list[str], log: Callable[[str], None] = print,
                root: Path | None = None) -> tuple[Path, bool]:
    """The interpreter of an environment with ``requirements``, built if it is not there yet.

    Returns:
        The interpreter, and whether it was already built (a cache hit).

    Raises:
        ModelLoadError: the build failed (the message names what pip could not install).
    """
    folder = (root or cache_root()) / env_key(requirements)
    if (folder / "ready").is_file():
        log(f"model environment {folder.name}: built before, reused ({', '.join(requirements)})")
        return python_of(folder), True
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f"{folder.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another gate building the same environment: wait for it
        if (folder / "ready").is_file():
            log(f"model environment {folder.name}: built by another gate meanwhile, reused")
            return python_of(folder), True
        shutil.rmtree(folder, ignore_errors=True)  # a build that did not finish
        _build(folder, requirements, log)
    return python_of(folder), False


def _build(folder: Path, requirements: list[str], log: Callable[[str], None]) -> None:
    t0 = time.perf_counter()
    log(f"model environment {folder.name}: building for {', '.join(requirements)} in {folder}")
    _run([sys.executable, "-m", "venv", "--without-pip", str(folder)], folder, log, "creating the environment")
    own = Path(subprocess.run([str(python_of(folder)), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                              capture_output=True, text=True, check=True).stdout.strip())
    # The engine's packages after the environment's own (site.addsitedir also reads their .pth files).
    (own / "zz-mdgate-engine.pth").write_text(
        "".join(f"import site; site.addsitedir({p!r})\n" for p in engine_site_dirs()))
    (folder / "requirements.txt").write_text("\n".join(requirements) + "\n")
    _run([str(python_of(folder)), "-m", "pip", "install", "--disable-pip-version-check", "--no-input",
          "--progress-bar", "off", "-r", str(folder / "requirements.txt")], folder, log, "installing the requirements")
    (folder / "ready").write_text(json.dumps({"requirements": requirements, "built_s": time.perf_counter() - t0}))
    log(f"model environment {folder.name}: ready in {time.perf_counter() - t0:.0f} s")


def _run(cmd: list[str], folder: Path, log: Callable[[str], None], what: str) -> None:
    """Run a build step, its output line by line to ``log`` and ``build.log``."""
    folder.mkdir(parents=True, exist_ok=True)
    lines: list[str] = []
    with open(folder / "build.log", "a") as out:
        with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env={**os.environ, "PIP_REQUIRE_VIRTUALENV": "false"}) as proc:
            assert proc.stdout is not None
            for line in proc.stdout:
                out.write(line)
                line = line.rstrip()
                if line and not line.startswith("WARNING: Location"):
                    lines.append(line)
                    log(line)
            code = proc.wait()
    if code != 0:
        errors = [ln for ln in lines if ln.startswith("ERROR:")]
        why = (errors or lines or [f"exit {code}"])[-1].removeprefix("ERROR: ")
        raise ModelLoadError(f"building the model's environment failed while {what}: {why} "
                             f"(log: {folder / 'build.log'})")

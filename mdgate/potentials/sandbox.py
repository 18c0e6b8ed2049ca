"""How the model process is confined: a clean environment, its own folder, and, where the kernel
allows unprivileged user namespaces, new user, network, PID and mount namespaces with every mount
read-only but that folder (:func:`command`); and the probes it runs on itself before any model
code (:func:`report`).
"""

from __future__ import annotations

import functools
import os
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Any

#: Variables the model process keeps from the engine's environment (nothing that names a server
#: or holds a secret).
KEEP_ENV = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "CUDA_VISIBLE_DEVICES",
            "PYTHONHASHSEED")

#: Run inside the new namespaces: the model's folder stays writable, every other mount is
#: remounted read-only, then the model process starts.
_SANDBOX_SH = r"""
t="$1"; shift
mount --bind "$t" "$t" || exit 97
awk '{print $5}' /proc/self/mountinfo | while read -r m; do
  [ "$m" = "$t" ] || mount -o remount,bind,ro "$m" 2>/dev/null
done
exec "$@"
"""


@functools.cache
def namespaces_available() -> str | None:
    """``None`` when ``unshare`` can make the model process's namespaces here, else why not."""
    exe = shutil.which("unshare")
    if exe is None:
        return "unshare is not installed"
    try:
        run = subprocess.run([exe, *_UNSHARE_ARGS, "--", "/bin/sh", "-c", "mount -o remount,bind,ro / && true"],
                             capture_output=True, timeout=30, env={"PATH": os.environ.get("PATH", "")})
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"unshare failed ({e})"
    if run.returncode != 0:
        return f"unshare failed: {run.stderr.decode(errors='replace').strip()[:200]}"
    return None


_UNSHARE_ARGS = ("--user", "--map-root-user", "--net", "--pid", "--fork", "--kill-child", "--mount-proc", "--mount")


def command(folder: Path, cmd: list[str]) -> list[str]:
    """``cmd`` run in new namespaces, ``folder`` its only writable place."""
    return [shutil.which("unshare") or "unshare", *_UNSHARE_ARGS, "--", "/bin/sh", "-c", _SANDBOX_SH, "sh",
            str(folder), *cmd]


#: Variable names (prefixes) that point at servers or hold credentials: a model process holds none.
SECRET_PREFIXES = ("MLFLOW_", "MDGATE_", "PREFECT_", "AWS_", "AZURE_", "GOOGLE_", "DATABRICKS_", "HF_TOKEN",
                   "GITHUB_TOKEN", "DASK_")


def report(probes: list[str]) -> dict[str, Any]:
    """Probe this process's confinement (run in the model process before any model code)."""
    read_only, writable = [], []
    for probe in probes:
        target = Path(probe) / f".mdgate-probe-{os.getpid()}"
        try:
            target.write_bytes(b"")
        except OSError:
            read_only.append(probe)
        else:
            target.unlink(missing_ok=True)
            writable.append(probe)
    return {"namespaces": _in_new_namespaces(), "read_only": read_only, "writable": writable,
            "network": _has_network(), "secrets": sorted(k for k in os.environ if k.startswith(SECRET_PREFIXES))}


def _in_new_namespaces() -> bool:
    """PID 1 of its own PID namespace (the sandbox's ``unshare --pid --fork``: this process is the
    child of PID 1 or PID 1 itself).
    """
    return os.getppid() in (0, 1) or os.getpid() == 1


def _has_network() -> bool:
    """Whether any interface besides loopback is up, or loopback answers."""
    try:
        names = [name for _, name in socket.if_nameindex()]
    except OSError:
        names = []
    if any(n != "lo" for n in names):
        return True
    s = socket.socket()
    s.settimeout(0.5)
    try:
        return s.connect_ex(("127.0.0.1", 9)) != 101  # ENETUNREACH: loopback is down
    finally:
        s.close()

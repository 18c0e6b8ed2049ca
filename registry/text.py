"""Text of tags and filters: times as tag values, one-line reasons, quoted filter strings, and
the gist of a request error. Pure functions; no MLflow.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime


def iso(t: datetime) -> str:
    """Tag value of a time: ISO 8601 in UTC, seconds."""
    return t.astimezone(UTC).isoformat(timespec="seconds")


def one_line(text: str, limit: int = 500) -> str:
    """Collapse ``text`` to one line of at most ``limit`` characters (for ``mdgate.reason``)."""
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[:limit - 1] + "…"


def quote(value: str) -> str:
    """Quote a string for an MLflow search filter."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def num(version: str) -> int:
    """A version number as an int (``-1`` when it is not one), for sorting."""
    try:
        return int(version)
    except ValueError:
        return -1


def gist(text: str) -> str:
    """The gist of a request error: urllib3's "Caused by X('...')" text, an OS error, else its start."""
    found = re.search(r"Caused by \w+\((['\"])(.*?)\1\)", text)
    if found:
        return found.group(2).strip()
    found = re.search(r"\[Errno \d+\][^'\")]*", text)
    return found.group(0).strip() if found else one_line(text, 160)

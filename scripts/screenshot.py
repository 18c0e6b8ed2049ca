"""Screenshot a page of the demo's own servers with headless Chromium (Debian's ``chromium``).

Drives Chromium over its DevTools protocol so that the page can be prepared first: scrollable
panels (the MLflow version page's tag table) are unrolled so every row shows, buttons named with
``--click`` are pressed and elements named with ``--hide`` removed (CSS selectors)::

    .venv/bin/python scripts/screenshot.py "http://127.0.0.1:5000/#/models/painn-md17/versions/6" \
        docs/mlflow_version_rejected.png --height 1960 --wait-for mdgate.status --click 'button[aria-label="Close"]'

The model's versions list, and the Prefect UI's runs while the demo's gates wait (shoot it
during ``make demo``, once versions show Queued)::

    .venv/bin/python scripts/screenshot.py "http://127.0.0.1:5000/#/models/painn-md17" \
        docs/mlflow_versions_list.png --height 1100 --wait-for "Version 6"
    .venv/bin/python scripts/screenshot.py "http://127.0.0.1:4200/runs" docs/prefect_runs_waiting.png \
        --height 1100 --wait-for Queued

``--prefect-review FLOW_RUN_ID`` shoots the Prefect UI's review form of a gate flow run paused for a
person's decision (``MDGATE_REVIEW``): it opens the run's page, waits until the run shows Paused,
presses its Resume button and waits for the form built from ``ReviewInput``::

    .venv/bin/python scripts/screenshot.py --prefect-review 0f9c... docs/prefect_review_form.png \
        --prefect-ui http://127.0.0.1:4200
"""

from __future__ import annotations

import argparse
import base64
import json
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

from websockets.sync.client import connect

#: Unroll every scrolled box (MLflow's tag table scrolls inside the page).
UNROLL = """
for (const el of document.querySelectorAll('*')) {
  const s = getComputedStyle(el);
  if ((s.overflowY === 'auto' || s.overflowY === 'scroll') && el.scrollHeight > el.clientHeight + 2
      && el !== document.documentElement && el !== document.body) {
    el.style.maxHeight = 'none'; el.style.height = 'auto'; el.style.overflowY = 'visible';
  }
}
"""

#: Press the first button whose visible text is the given one; true if there was one.
CLICK_TEXT = """
(() => {
  const b = [...document.querySelectorAll('button')].find(e => e.innerText.trim() === %s);
  if (b) { b.click(); return true; }
  return false;
})()
"""


class DevTools:
    """A minimal DevTools-protocol client of one page."""

    def __init__(self, ws_url: str):
        self.ws = connect(ws_url, max_size=None)
        self.next_id = 0

    def call(self, method: str, **params: object) -> dict:
        """Send one command and return its result (events in between are skipped)."""
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self.next_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})

    def evaluate(self, expression: str) -> object:
        """Evaluate JavaScript in the page; return its value."""
        return self.call("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")


def main() -> None:
    """Take the screenshot."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", nargs="?", default="", help="the page (not with --prefect-review)")
    parser.add_argument("out", type=Path)
    parser.add_argument("--prefect-review", default="", metavar="FLOW_RUN_ID",
                        help="the review form of this paused gate flow run in the Prefect UI")
    parser.add_argument("--prefect-ui", default="http://127.0.0.1:4200", help="the Prefect UI's address")
    parser.add_argument("--width", type=int, default=1400)
    parser.add_argument("--height", type=int, default=2000, help="viewport height (the UIs fill the viewport)")
    parser.add_argument("--wait-s", type=float, default=8.0, help="time for the page to render its data")
    parser.add_argument("--wait-for", default="", help="text the page must show before the screenshot")
    parser.add_argument("--hide", action="append", default=[], help="CSS selector of an element to remove")
    parser.add_argument("--click", action="append", default=[], help="CSS selector of a button to press first")
    parser.add_argument("--click-text", action="append", default=[],
                        help="visible text of a button to press first (after --click)")
    parser.add_argument("--then-wait-for", default="", help="text the page must show after the clicks")
    parser.add_argument("--no-unroll", dest="unroll", action="store_false",
                        help="leave scrolled panels as they are (a dialog covers only the viewport)")
    parser.add_argument("--port", type=int, default=9233)
    args = parser.parse_args()
    if args.prefect_review:
        args.url = f"{args.prefect_ui.rstrip('/')}/runs/flow-run/{args.prefect_review}"
        args.wait_for = args.wait_for or "Paused"
        args.click_text = args.click_text or ["Resume"]
        args.then_wait_for = args.then_wait_for or "Resume Flow Run"
        args.unroll = False
    if not args.url:
        parser.error("give the page's URL, or --prefect-review FLOW_RUN_ID")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("error: install Debian's chromium (apt-get install chromium)")
    with tempfile.TemporaryDirectory() as profile:
        proc = subprocess.Popen(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--hide-scrollbars",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", f"--remote-debugging-port={args.port}",
             f"--window-size={args.width},1000", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            for _ in range(100):
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{args.port}/json/list", timeout=2) as r:
                        pages = [p for p in json.load(r) if p.get("type") == "page"]
                    if pages:
                        break
                except OSError:
                    pass
                time.sleep(0.2)
            else:
                raise SystemExit("error: chromium did not open its DevTools port")
            page = DevTools(pages[0]["webSocketDebuggerUrl"])
            page.call("Page.enable")
            page.call("Emulation.setDeviceMetricsOverride", width=args.width, height=args.height,
                      deviceScaleFactor=1, mobile=False)
            page.call("Page.navigate", url=args.url)
            deadline = time.monotonic() + max(args.wait_s, 30.0)
            time.sleep(args.wait_s)
            while args.wait_for and time.monotonic() < deadline and not page.evaluate(
                    f"document.body.innerText.includes({json.dumps(args.wait_for)})"):
                time.sleep(0.5)
            for selector in args.click:
                page.evaluate(f"document.querySelectorAll({json.dumps(selector)}).forEach(e => e.click())")
                time.sleep(1.0)
            for text in args.click_text:
                if not page.evaluate(CLICK_TEXT % json.dumps(text)):
                    raise SystemExit(f"error: no button {text!r} on {args.url}")
                time.sleep(1.0)
            deadline = time.monotonic() + 30.0
            while args.then_wait_for and time.monotonic() < deadline and not page.evaluate(
                    f"document.body.innerText.includes({json.dumps(args.then_wait_for)})"):
                time.sleep(0.5)
            time.sleep(1.0 if args.then_wait_for else 0.0)
            for selector in args.hide:
                page.evaluate(f"document.querySelectorAll({json.dumps(selector)}).forEach(e => e.remove())")
            if args.unroll:
                page.evaluate(UNROLL)
                time.sleep(1.0)
            shot = page.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_bytes(base64.b64decode(shot["data"]))
            print(f"wrote {args.out} ({args.width}x{args.height})")
        finally:
            proc.terminate()
            proc.wait(timeout=10)


if __name__ == "__main__":
    main()

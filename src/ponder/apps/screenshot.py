"""Render an HTML file in headless Chromium: a PNG screenshot, the rendered DOM, console messages.

    python -m ponder.apps.screenshot REPORT.html OUT.png [--width 1400] [--height 2400]

Used by the report's rendering test and to make the demo report's screenshot for docs/.
Needs a Chromium binary (Debian package ``chromium``); raises :class:`PonderError` without one.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from ponder.errors import PonderError

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
# Flags that keep a headless run hermetic: no network chatter, no updates, no profile reuse.
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--hide-scrollbars", "--enable-logging=stderr", "--v=0")
CONSOLE_LINE = re.compile(r":CONSOLE[^\]]*\]\s*(.*)")


@dataclass
class Rendering:
    png: Path
    dom: str
    console: list[str] = field(default_factory=list)  # every console message the page logged

    @property
    def errors(self) -> list[str]:
        return [m for m in self.console if "Uncaught" in m or "rror" in m]


def find_browser() -> str | None:
    return next((path for name in BROWSERS if (path := shutil.which(name))), None)


def _run(browser: str, extra: list[str], url: str, timeout: float) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(prefix="ponder-chromium-") as profile:
        cmd = [browser, *FLAGS, f"--user-data-dir={profile}", *extra, url]
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            raise PonderError(f"chromium did not finish rendering {url} within {timeout:.0f} s") from exc


def render(html_path: str | Path, png_path: str | Path, *, width: int = 1400, height: int = 2400,
           timeout: float = 90.0) -> Rendering:
    """Screenshot ``html_path`` to ``png_path`` and dump its DOM; collect console messages."""
    html_path, png_path = Path(html_path).resolve(), Path(png_path).resolve()
    if not html_path.is_file():
        raise PonderError(f"no such HTML file: {html_path}")
    browser = find_browser()
    if browser is None:
        raise PonderError("no Chromium found (install the `chromium` package)")
    url = html_path.as_uri()
    png_path.parent.mkdir(parents=True, exist_ok=True)
    shot = _run(browser, [f"--screenshot={png_path}", f"--window-size={width},{height}"], url, timeout)
    if not png_path.exists():
        tail = (shot.stderr.strip().splitlines() or ["no output"])[-1]
        raise PonderError(f"chromium wrote no screenshot (exit {shot.returncode}): {tail}")
    dom = _run(browser, ["--dump-dom", f"--window-size={width},{height}"], url, timeout)
    console = [m.group(1) for line in (shot.stderr + dom.stderr).splitlines()
               if (m := CONSOLE_LINE.search(line))]
    return Rendering(png=png_path, dom=dom.stdout, console=console)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ponder.apps.screenshot", description=__doc__.splitlines()[0])
    parser.add_argument("html", type=Path)
    parser.add_argument("png", type=Path)
    parser.add_argument("--width", type=int, default=1400)
    parser.add_argument("--height", type=int, default=2400)
    args = parser.parse_args(argv)
    try:
        result = render(args.html, args.png, width=args.width, height=args.height)
    except PonderError as exc:
        sys.stderr.write(f"ponder: error: {exc}\n")
        return 2
    for message in result.console:
        sys.stderr.write(f"console: {message}\n")
    print(f"wrote {result.png}")
    return 1 if result.errors else 0


if __name__ == "__main__":
    raise SystemExit(main())

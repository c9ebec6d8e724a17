"""Headless Chromium (Debian's ``chromium``) for the tests that look at a page as a browser
renders it: the DOM after parsing (``--dump-dom``) and a screenshot.

Each call starts one browser with a temporary profile (``--user-data-dir``, removed after),
waits for it up to ``timeout`` seconds, and always kills its whole process group at the end
(Chromium forks zygote, renderer and utility processes), so no browser outlives the call.
"""

from __future__ import annotations

import html
import os
import pathlib
import re
import shutil
import signal
import subprocess
import tempfile

#: The browser: ``chromium`` on the PATH (the Makefile installs Debian's), else Debian's path.
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
TIMEOUT = 60.0

_FLAGS = ("--headless", "--disable-gpu", "--no-sandbox", "--no-first-run",
          "--no-default-browser-check", "--disable-extensions", "--disable-sync",
          "--disable-background-networking", "--disable-component-update",
          "--disable-dev-shm-usage", "--hide-scrollbars", "--mute-audio")


def _run(*args: str, timeout: float) -> str:
    """Run the browser with ``args``; its standard output. Killed, with every process it
    started, when it returns or after ``timeout`` seconds (then TimeoutError)."""
    with tempfile.TemporaryDirectory(prefix="lbmiddleware-chromium-") as profile:
        process = subprocess.Popen(
            [CHROMIUM, *_FLAGS, f"--user-data-dir={profile}", *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        try:
            out, err = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise TimeoutError(f"chromium {' '.join(args)} ran over {timeout}s") from None
        finally:
            try:
                os.killpg(process.pid, signal.SIGKILL)     # its own session: its group
            except ProcessLookupError:
                pass
            process.communicate()
        if process.returncode != 0:
            raise RuntimeError(f"chromium exited with {process.returncode}: "
                               f"{err.decode(errors='replace')[-2000:]}")
        return out.decode("utf-8", errors="replace")


def dump_dom(url: str, *, timeout: float = TIMEOUT) -> str:
    """The DOM of ``url`` once loaded, serialized as HTML."""
    return _run("--dump-dom", url, timeout=timeout)


def screenshot(url: str, path: str | os.PathLike[str], *, width: int = 1280,
               height: int = 900, scale: float = 1.0, timeout: float = TIMEOUT
               ) -> pathlib.Path:
    """A PNG of ``url`` in a ``width`` x ``height`` window (CSS pixels; the image has
    ``scale`` device pixels for each), written to ``path``."""
    target = pathlib.Path(path).resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    target.unlink(missing_ok=True)
    _run(f"--screenshot={target}", f"--window-size={width},{height}",
         f"--force-device-scale-factor={scale:g}", url, timeout=timeout)
    if not target.exists():
        raise RuntimeError(f"chromium wrote no screenshot of {url} to {target}")
    return target


def sideways_overflow(page: str, width: int, *, timeout: float = TIMEOUT) -> int:
    """How far ``page`` (an HTML document) overflows sideways when shown ``width`` CSS pixels
    wide: the largest of the document's and each ``.scroll`` box's scroll width beyond its
    own width (0: nothing to scroll sideways). The page goes into a same-origin ``srcdoc``
    frame of that width, measured by this helper's script once it has loaded, so the page
    itself needs none."""
    measure = (
        "addEventListener('load', () => {"
        " const d = document.getElementById('page').contentDocument;"
        " const boxes = [d.documentElement, ...d.querySelectorAll('.scroll')];"
        " const over = Math.max(...boxes.map(e => e.scrollWidth - e.clientWidth));"
        " document.getElementById('overflow').textContent = String(over); });")
    wrapper = ('<!doctype html><html><body style="margin:0">'
               f'<iframe id="page" style="width:{width}px;height:900px;border:0" '
               f'srcdoc="{html.escape(page, quote=True)}"></iframe>'
               f'<div id="overflow">unmeasured</div><script>{measure}</script></body></html>')
    with tempfile.TemporaryDirectory(prefix="lbmiddleware-overflow-") as folder:
        file = pathlib.Path(folder) / "measure.html"
        file.write_text(wrapper, encoding="utf-8")
        dom = dump_dom(file.as_uri(), timeout=timeout)
    found = re.search(r'<div id="overflow">([^<]*)</div>', dom)
    if found is None or not found.group(1).lstrip("-").isdigit():
        raise RuntimeError(f"the page was not measured: {found.group(1) if found else dom!r}")
    return int(found.group(1))


def visible_text(dom: str) -> str:
    """The text of a dumped DOM as a person reads it: tags, style and titles out,
    entities decoded, white space collapsed (what ``document.body.innerText`` gives,
    near enough for a test)."""
    dom = re.sub(r"(?is)<(style|title|svg)\b.*?</\1>", " ", dom)
    text = re.sub(r"<[^>]+>", " ", dom)
    return re.sub(r"\s+", " ", html.unescape(text)).strip()

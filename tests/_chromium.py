"""Headless Chromium for end-to-end checks of written HTML pages (tests skip when it is not installed)."""

from __future__ import annotations

import os
import re
import subprocess

import pytest

#: Where Debian's ``chromium`` package puts the browser.
CHROMIUM = "/usr/bin/chromium"

#: Appended to a copy of a page: after ``load``, the title becomes
#: ``"probe <decoded images>/<images> <resources fetched> <their URLs as JSON>"``. Resource timing lists
#: every request the page made (failed ones included); ``data:`` URIs are not requests.
PROBE = """<script>
window.addEventListener("load", function () {
  var im = document.images, ok = 0;
  for (var i = 0; i < im.length; i++) { if (im[i].complete && im[i].naturalWidth > 0) ok++; }
  var r = performance.getEntriesByType("resource").map(function (e) { return e.name; });
  document.title = "probe " + ok + "/" + im.length + " " + r.length + " " + JSON.stringify(r);
});
</script>
"""


def chromium():
    """The browser's path, or skip the calling test."""
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install -y chromium)")
    return CHROMIUM


def run(url, profile, *args, timeout=60):
    """Run headless Chromium on ``url`` with every host unresolvable; return the finished process.

    ``profile`` is a fresh user-data folder (parallel runs must not share one).
    """
    cmd = [chromium(), "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
           "--no-first-run", "--disable-extensions", "--disable-background-networking",
           f"--user-data-dir={profile}", "--host-resolver-rules=MAP * ~NOTFOUND", *args, url]
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        pytest.fail(f"chromium did not finish within {timeout} s: {' '.join(cmd)}")


def probe(page, tmp_path):
    """Load a copy of ``page`` with :data:`PROBE` appended; return (decoded, total, fetched URLs)."""
    import json

    with open(page, encoding="utf-8") as fh:
        text = fh.read()
    copy = os.path.join(os.path.dirname(page), "_probe_" + os.path.basename(page))
    with open(copy, "w", encoding="utf-8") as fh:
        fh.write(text.replace("</body>", PROBE + "</body>", 1))
    try:
        res = run("file://" + copy, tmp_path / "profile-probe", "--virtual-time-budget=5000", "--dump-dom")
    finally:
        os.unlink(copy)
    m = re.search(r"<title>probe (\d+)/(\d+) (\d+) (.*?)</title>", res.stdout, re.S)
    assert m, f"no probe title in the DOM (exit {res.returncode}): {res.stdout[:300]!r} {res.stderr[-500:]!r}"
    urls = json.loads(m.group(4).replace("&amp;", "&").replace("&quot;", '"'))
    return int(m.group(1)), int(m.group(2)), urls


#: After ``load``, the title becomes ``"layout <scrollWidth> <clientWidth> <has $\\ in the text: 0/1>"``.
LAYOUT = """<script>
window.addEventListener("load", function () {
  var d = document.documentElement, t = document.body.innerText;
  document.title = "layout " + d.scrollWidth + " " + d.clientWidth + " " + (t.indexOf("$\\\\") >= 0 ? 1 : 0);
});
</script>
"""


def layout(page, tmp_path, width=1280):
    """Load a copy of ``page`` at ``width`` px; return (page scroll width, viewport width, LaTeX source seen)."""
    with open(page, encoding="utf-8") as fh:
        text = fh.read()
    copy = os.path.join(os.path.dirname(page), "_layout_" + os.path.basename(page))
    with open(copy, "w", encoding="utf-8") as fh:
        fh.write(text.replace("</body>", LAYOUT + "</body>", 1))
    try:
        res = run("file://" + copy, tmp_path / "profile-layout", f"--window-size={width},900",
                  "--virtual-time-budget=5000", "--dump-dom")
    finally:
        os.unlink(copy)
    m = re.search(r"<title>layout (\d+) (\d+) (\d)</title>", res.stdout)
    assert m, f"no layout title in the DOM (exit {res.returncode}): {res.stderr[-500:]!r}"
    return int(m.group(1)), int(m.group(2)), m.group(3) == "1"

"""One self-contained HTML page for a finished report folder: verdicts first, then the figures, then the rest.

:func:`write_html` reads what the report wrote (``README.md``, ``findings.json``, PNG figures, CSV tables)
and writes ``report.html`` beside them. The page loads nothing: figures are embedded as ``data:`` URIs,
the style is inline, there is no script, no font and no link that fetches anything (relative links to
the CSV files in the same folder are plain ``<a href>``). The Markdown of the README is converted by
:mod:`analysis.report.markdown` (markdown-it-py), which escapes every piece of text it copies.

Order: a table of contents; the verdict table (once: the README's own Markdown table is replaced by the one
built from ``findings.json``); the README's notes and figures; the CSV tables; the inputs and settings at the
end, in a collapsed section.
"""

from __future__ import annotations

import csv
import html
import json
import math
import os
import re
import urllib.parse

from analysis.errors import InputError
from analysis.io.outputs import atomic_output
from analysis.report.markdown import VERDICT_STYLE, Context, anchor, code_html, figure_html, markdown_to_html, render

__all__ = ["write_html", "markdown_to_html", "MAX_TABLE_ROWS"]

#: CSV tables with at most this many data rows are embedded; larger ones are named with their row count.
MAX_TABLE_ROWS = 40

_DASH = "–"

_CSS = """
:root{color-scheme:light}
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;line-height:1.5;
color:#1d1d1f;background:#fff;margin:0 auto;padding:1.5rem 1.25rem 3rem;max-width:1100px;font-size:16px}
header{border-bottom:2px solid #d0d7de;margin-bottom:1rem}
h1{font-size:1.8rem;margin:.2rem 0 .3rem}h2{font-size:1.4rem;margin:2rem 0 .6rem;border-bottom:1px solid #d0d7de;
padding-bottom:.2rem}h3{font-size:1.15rem;margin:1.5rem 0 .5rem}h4,h5,h6{font-size:1rem;margin:1.2rem 0 .4rem}
p{margin:.5rem 0}.meta{color:#57606a;margin:.2rem 0 .8rem}
a{color:#0a58ca}code{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:.88em;
background:#f3f4f6;padding:.05em .3em;border-radius:3px;overflow-wrap:anywhere}
pre{background:#f3f4f6;padding:.7rem;overflow-x:auto;border-radius:4px}pre code{padding:0;background:none}
.scroll{overflow-x:auto;margin:.6rem 0}
table{border-collapse:collapse;font-size:.9rem;margin:.2rem 0}
th,td{border:1px solid #c9d1d9;padding:.3rem .5rem;vertical-align:top;text-align:left}
th{background:#f0f3f6}tr:nth-child(even) td{background:#fafbfc}
td.num{text-align:right;white-space:nowrap;font-variant-numeric:tabular-nums}
table.kv td:first-child{white-space:nowrap;font-weight:600}
table.verdicts{font-size:.8rem;width:100%}table.verdicts td.wide{min-width:12em}table.verdicts td.num{white-space:normal}table.verdicts .v{white-space:normal}table.verdicts td.verdict{min-width:7em}
.v{display:inline-block;padding:.05em .45em;border-radius:4px;font-weight:700;white-space:nowrap;
border:1px solid transparent}
.v-good{background:#dafbe1;color:#116329;border-color:#8fd19e}.v-part{background:#fff5d6;color:#7a4e00;
border-color:#e3c26b}.v-bad{background:#ffe4e4;color:#a40e26;border-color:#f0a3a3}
.v-none{background:#eef0f2;color:#424a53;border-color:#c9d1d9}
strong.v{padding:0 .3em}
figure{margin:1rem 0;text-align:center}figure img,img{max-width:100%;height:auto}
figcaption{color:#57606a;font-size:.9rem}
.notice{background:#fff8e6;border-left:4px solid #d4a72c;padding:.5rem .8rem;margin:.8rem 0}
nav ul{columns:2;margin:.3rem 0}nav li{break-inside:avoid}nav li.l3{margin-left:1.2em;font-size:.92em}
footer{margin-top:3rem;color:#57606a;font-size:.85rem;border-top:1px solid #d0d7de;padding-top:.5rem}
@media print{figure,table{break-inside:avoid}}
"""


def write_html(folder: str | os.PathLike[str], *, out_name: str = "report.html",
               title: str = "LoRA subspace report") -> str:
    """Write one self-contained HTML page for a finished report folder.

    The page holds a header, the inputs and settings, a verdict table from ``findings.json``, the body of
    ``README.md`` with every referenced figure embedded, the CSV tables (those of at most
    :data:`MAX_TABLE_ROWS` rows embedded, larger ones named with their row count) and, under "Other
    figures", every PNG the README does not show. Nothing on the page is fetched from anywhere. A missing
    or unreadable ``findings.json`` or ``README.md`` is said on the page, which is still written.

    Parameters
    ----------
    folder : str or os.PathLike
        The report folder (as written by :func:`analysis.report.write_report`).
    out_name : str
        File name of the page inside ``folder``; a plain name ending in ``.html``.
    title : str
        Title of the page.

    Returns
    -------
    str
        Path of the page written (replaced atomically: a temporary file in ``folder``, then a rename).

    Raises
    ------
    ValueError
        ``folder`` is not a folder, or ``out_name`` is not a plain ``.html`` file name.
    TypeError
        ``title`` or ``out_name`` is not a string.
    """
    folder = os.fspath(folder)
    if not isinstance(out_name, str) or not isinstance(title, str):
        raise TypeError(f"out_name and title must be str, got {type(out_name).__name__} and "
                        f"{type(title).__name__}")
    if not os.path.isdir(folder):
        raise InputError(f"{folder!r} is not a folder; pass the folder the report was written to")
    if os.path.basename(out_name) != out_name or not out_name.endswith(".html") or out_name.startswith("."):
        raise InputError(f"out_name must be a plain file name ending in '.html' (no folder), got {out_name!r}")
    page = _page(folder, title)
    path = os.path.join(folder, out_name)
    _write_atomic(path, page)
    return path


# -- the page -------------------------------------------------------------------------------------------

def _page(folder, title):
    files = sorted(os.listdir(folder))
    ctx = Context(folder)
    parts = []
    meta, inputs, settings, findings, problem = _read_findings(folder)
    ctx.heading_ids.update({"inputs", "verdicts", "tables", "other-figures", "other-files"})
    sub = "Written from the report folder's <code>README.md</code>, <code>findings.json</code>, figures and tables"
    if meta.get("tool"):
        sub += " (" + html.escape(str(meta["tool"])) + (" " + html.escape(str(meta["version"]))
                                                         if meta.get("version") else "") + ")"
    parts.append(f"<header><h1>{html.escape(title)}</h1><p class=\"meta\">{sub}.</p></header>")
    body, toc = [], []
    verdicts = f'<p class="notice">{problem}</p>' if problem else _verdict_table(findings)
    readme = os.path.join(folder, "README.md")
    try:
        with open(readme, encoding="utf-8") as fh:
            md = fh.read()
    except (OSError, UnicodeDecodeError) as e:
        toc.append(("verdicts", "Verdicts", 2))
        body.append(f'<section><h2 id="verdicts">Verdicts</h2>{verdicts}</section>')
        body.append(f'<p class="notice">README.md could not be read ({html.escape(type(e).__name__)}: '
                    f'{html.escape(str(e.strerror or e) if isinstance(e, OSError) else str(e))}).</p>')
    else:
        md, placed = _verdicts_in_readme(md)
        if not placed:  # a README without a "Verdicts" section: the table comes first
            toc.append(("verdicts", "Verdicts", 2))
            body.append(f'<section><h2 id="verdicts">Verdicts</h2>{verdicts}</section>')
        text = render(md, ctx, shift=1)
        if placed:
            text = text.replace(f"<p>{_SLOT}</p>", verdicts, 1)
        body.append('<section class="readme">' + text + "</section>")
        toc += [(i, re.sub(r"<[^>]+>", "", t), lvl) for i, t, lvl in ctx.toc]

    csvs = [f for f in files if f.lower().endswith(".csv") and os.path.isfile(os.path.join(folder, f))]
    if csvs:
        toc.append(("tables", "Tables", 2))
        body.append('<section><h2 id="tables">Tables</h2>' + _csv_tables(folder, csvs) + "</section>")
    others = [f for f in files if f.lower().endswith(".png") and f not in ctx.shown
              and os.path.isfile(os.path.join(folder, f))]
    if others:
        toc.append(("other-figures", "Other figures", 2))
        body.append('<section><h2 id="other-figures">Other figures</h2>'
                    '<p>Figures in the folder that the README does not show.</p>')
        body += [figure_html(ctx, f, f) for f in others]
        body.append("</section>")
    rest = [f for f in files if not f.lower().endswith((".png", ".csv", ".html")) and f != "README.md"
            and not f.startswith(".") and os.path.isfile(os.path.join(folder, f))]
    if rest:
        toc.append(("other-files", "Other files", 2))
        body.append('<section><h2 id="other-files">Other files</h2><p>In the same folder as this page:</p><ul>'
                    + "".join(f"<li>{_rel_link(f, code_html(f))} ({_size(os.path.join(folder, f))})</li>"
                              for f in rest) + "</ul></section>")
    toc.append(("inputs", "Inputs and settings (findings.json)", 2))
    body.append('<section><h2 id="inputs">Inputs and settings</h2><details><summary>As recorded in '
                '<code>findings.json</code> (click to open)</summary>')
    if problem:
        body.append("<p>Not available: they are recorded in <code>findings.json</code>.</p>")
    else:
        body.append("<h3>Inputs</h3>" + _kv_table(inputs, "inputs") + "<h3>Settings</h3>"
                    + _kv_table(settings, "settings"))
    body.append("</details></section>")

    parts.append("<nav><strong>Contents</strong><ul>"
                 + "".join(f'<li class="l{lvl}"><a href="#{i}">{t}</a></li>' for i, t, lvl in toc) + "</ul></nav>")
    parts += body
    parts.append("<footer>A self-contained page: the figures are embedded and nothing is loaded from "
                 "elsewhere; links to CSV and other files point into the report folder.</footer>")
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            f"<title>{html.escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
            + "\n".join(parts) + "\n</body>\n</html>\n")


_SLOT = "VERDICT-TABLE-FROM-FINDINGS-JSON"


def _verdicts_in_readme(md):
    """The README with its "Verdicts" section's Markdown table replaced by a slot for the structured table.

    Returns
    -------
    (str, bool)
        The Markdown, and whether a "Verdicts" section was found.
    """
    lines = md.splitlines()
    start = next((i for i, ln in enumerate(lines) if re.match(r"^#{1,6}\s+Verdicts\s*$", ln)), None)
    if start is None:
        return md, False
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("#")), len(lines))
    rows = [i for i in range(start + 1, end) if lines[i].lstrip().startswith("|")]
    if not rows:
        return "\n".join(lines[:end] + ["", _SLOT, ""] + lines[end:]), True
    return "\n".join(lines[:rows[0]] + [_SLOT] + lines[rows[-1] + 1:]), True


def _read_findings(folder):
    """(meta, inputs, settings, findings, problem); ``problem`` is an HTML notice, or None."""
    path = os.path.join(folder, "findings.json")
    if not os.path.exists(path):
        return {}, {}, {}, [], ("No <code>findings.json</code> in this folder: the inputs, settings and the "
                                "verdict table are not available.")
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
        if not isinstance(data, dict):
            raise ValueError(f"expected a JSON object, got {type(data).__name__}")
        items = data.get("findings", [])
        if not isinstance(items, list):
            raise ValueError(f"'findings' must be a list, got {type(items).__name__}")
    except (OSError, UnicodeDecodeError, ValueError) as e:
        return {}, {}, {}, [], (f"<code>findings.json</code> could not be read ({html.escape(str(e))}): the "
                                "inputs, settings and the verdict table are not available.")
    meta = {k: data.get(k) for k in ("tool", "version")}
    as_dict = (lambda v: v if isinstance(v, dict) else {})
    return meta, as_dict(data.get("inputs")), as_dict(data.get("settings")), \
        [f for f in items if isinstance(f, dict)], None


def _kv_table(d, what):
    if not d:
        return f"<p>No {what} recorded.</p>"
    rows = "".join(f"<tr><td>{html.escape(str(k))}</td><td>{_value(v)}</td></tr>" for k, v in d.items())
    return f'<div class="scroll"><table class="kv"><tr><th>name</th><th>value</th></tr>{rows}</table></div>'


def _value(v):
    if isinstance(v, str):
        return code_html(v)
    if isinstance(v, (dict, list)) or v is None or isinstance(v, bool):
        return code_html(json.dumps(v, ensure_ascii=False, default=str))
    if isinstance(v, float):
        return html.escape(_num(v, ".6g"))
    return html.escape(str(v))


def _num(x, spec=".3g"):
    """A number for a table cell: '–' for None / NaN / anything not a number, ∞ for infinities."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return _DASH if x is None or not isinstance(x, str) or not x.strip() else html.escape(x)
    if math.isnan(x):
        return _DASH
    if math.isinf(x):
        return "∞" if x > 0 else "−∞"
    if spec.endswith("f") and abs(x) >= 1e5:
        spec = ".3g"
    return format(x, spec).replace("-", "−")


def _verdict_badge(verdict):
    """The verdict as a coloured label with a symbol and its words."""
    cls, sym = VERDICT_STYLE.get(verdict, ("none", "?"))
    return f'<span class="v v-{cls}">{sym}&nbsp;{html.escape(str(verdict))}</span>'


def _verdict_order(item):
    """Sort (verdict, count) pairs: held, partly, not held, not computed, unknown; then by name."""
    cls = VERDICT_STYLE.get(item[0], ("?",))[0]
    return ("good", "part", "bad", "none").index(cls) if cls != "?" else 4, item[0]


def _verdict_table(findings):
    if not findings:
        return "<p><code>findings.json</code> lists no findings.</p>"
    counts = {}
    for f in findings:
        counts[str(f.get("verdict"))] = counts.get(str(f.get("verdict")), 0) + 1
    summary = ", ".join(f"{n} {_verdict_badge(v)}" for v, n in sorted(counts.items(), key=_verdict_order))
    head = ("<tr><th>figure</th><th>verdict</th><th>claim (paper)</th><th>measured here (conditions below)</th>"
            "<th>effect</th><th>null mean ± sd</th><th>z</th><th>p</th><th>holding</th><th>power</th></tr>")
    rows = []
    for f in findings:
        text = (lambda k: html.escape(str(f[k])) if f.get(k) not in (None, "") else _DASH)
        mean, sd = f.get("null_mean"), f.get("null_sd")
        null = _DASH if _num(mean) == _DASH and _num(sd) == _DASH else f"{_num(mean)} ± {_num(sd)}"
        nh, nm = f.get("n_holding"), f.get("n_modules")
        held = f"{nh}/{nm}" if all(isinstance(n, int) and not isinstance(n, bool) for n in (nh, nm)) and nm \
            else _DASH
        rule = (f'<br><small>rule: {html.escape(str(f["rule"]))}</small>' if f.get("rule") else "")
        cond = (f'<br><small>conditions: {html.escape(str(f["conditions"]))}</small>' if f.get("conditions") else "")
        rows.append(f'<tr id="finding-{html.escape(str(f.get("id", "")), quote=True)}"><td>{text("figure")}</td>'
                    f'<td class="verdict">{_verdict_badge(f.get("verdict"))}</td>'
                    f'<td class="wide">{text("paper")}{rule}</td><td class="wide">{text("measured")}{cond}</td>'
                    f'<td class="num">{_num(f.get("effect"))}</td><td class="num">{null}</td>'
                    f'<td class="num">{_num(f.get("z"), ".1f")}</td><td class="num">{_num(f.get("p_tail"), ".2g")}</td>'
                    f'<td class="num">{held}</td><td class="num">{_num(f.get("power"), ".2f")}</td></tr>')
    return (f"<p>{len(findings)} findings: {summary}. Effect, null and z: the measured statistic, the mean ± "
            f"sd of its null (random subspaces) and z = (effect − null mean) / null sd; p: its tail probability "
            f"under that null; power: the share of the paper's own effect, planted into this geometry, that the "
            f"same test finds; {_DASH} where not computed.</p>"
            f'<div class="scroll"><table class="verdicts">{head}{"".join(rows)}</table></div>')


# -- figures, tables and files ----------------------------------------------------------------------------

def _csv_tables(folder, names):
    """Small tables embedded (one heading each), then one list naming the larger ones with their size."""
    small, large = [], []
    for name in names:
        head = f'<h3 id="table-{anchor(name)}">{_rel_link(name, code_html(name))}</h3>'
        try:
            with open(os.path.join(folder, name), encoding="utf-8", newline="") as fh:
                lines = fh.readlines()
            k = next((t for t, ln in enumerate(lines) if not ln.startswith("#")), len(lines))
            rows = [r for r in csv.reader(lines[k:]) if r]  # leading '#' lines are comments (save_frame's dtypes)
        except (OSError, UnicodeDecodeError, csv.Error) as e:
            small.append(head + f'<p class="notice">could not be read: {html.escape(str(e))}</p>')
            continue
        n, ncol = max(len(rows) - 1, 0), len(rows[0]) if rows else 0
        if n > MAX_TABLE_ROWS:
            large.append(f'<li id="table-{anchor(name)}">{_rel_link(name, code_html(name))}: '
                         f"{n} rows × {ncol} columns</li>")
        elif not rows:
            small.append(head + "<p>Empty.</p>")
        else:
            th = "".join(f"<th>{html.escape(c)}</th>" for c in rows[0])
            body = "".join("<tr>" + "".join(_csv_cell(c) for c in r) + "</tr>" for r in rows[1:])
            small.append(head + f'<p>{n} rows × {ncol} columns.</p><div class="scroll"><table><tr>{th}</tr>'
                                f"{body}</table></div>")
    if large:
        small.append(f"<h3>Larger tables</h3><p>More than {MAX_TABLE_ROWS} rows each, so not embedded; the files are "
                     "in the report folder:</p><ul>" + "".join(large) + "</ul>")
    return "".join(small)


def _csv_cell(c):
    try:
        x = float(c)
    except ValueError:
        return f"<td>{html.escape(c)}</td>"
    short = _num(x, ".4g") if re.search(r"[.eE]", c) and math.isfinite(x) else html.escape(c)
    title = f' title="{html.escape(c, quote=True)}"' if short != c else ""
    return f'<td class="num"{title}>{short}</td>'


def _rel_link(name, label):
    return f'<a href="{html.escape(urllib.parse.quote(name), quote=True)}">{label}</a>'


def _size(path):
    n = os.path.getsize(path)
    return f"{n} bytes" if n < 1024 else f"{n / 1024:.0f} KiB" if n < 2 ** 20 else f"{n / 2 ** 20:.1f} MiB"


# -- writing ------------------------------------------------------------------------------------------------

def _write_atomic(path, text):
    """Write ``text`` to ``path`` whole or not at all (a temporary file beside it, then a rename)."""
    with atomic_output(path, force=True) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="\n") as fh:
            fh.write(text)

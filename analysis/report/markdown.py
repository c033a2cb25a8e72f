"""A small Markdown-to-HTML converter for the report's own README: text escaped, images embedded.

Supported: ATX headings, paragraphs, pipe tables, ``-`` / ``*`` / numbered lists (nested by indentation),
fenced code, ``---`` rules, ``>`` quotes; inline ``code``, **bold**, *italic*, [links](href) and
![images](file.png). Images that are files of the report folder become ``data:`` URIs; anything else is
shown as a note, never as a ``src`` that loads. No Markdown package is needed.
"""

from __future__ import annotations

import base64
import html
import os
import re
import urllib.parse

__all__ = ["markdown_to_html", "Context", "blocks", "figure_html", "code_html", "inline_html", "anchor",
           "VERDICT_STYLE"]

#: verdict -> (css class, symbol); the symbol and the words carry the outcome, the colour only repeats it
VERDICT_STYLE = {
    "reproduces": ("good", "✓"), "check holds": ("good", "✓"),
    "partly": ("part", "◐"),
    "does not reproduce": ("bad", "✗"), "check FAILS": ("bad", "✗"),
    "not computed": ("none", "–"),
}
_PNG = b"\x89PNG\r\n\x1a\n"
_IMAGE_TYPES = ((_PNG, "image/png"), (b"\xff\xd8\xff", "image/jpeg"), (b"GIF87a", "image/gif"),
                (b"GIF89a", "image/gif"))


class Context:
    """What the Markdown conversion needs to know about the folder, and what it has shown."""

    def __init__(self, folder):
        self.folder = os.path.abspath(folder)
        self.shown = set()
        self.heading_ids = set()
        self.toc = []

    def local(self, src):
        """The file name of ``src`` if it is a plain relative path to a file inside the folder, else None."""
        if not src or re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:|^[/\\#]", src):
            return None
        rel = urllib.parse.unquote(src.split("#")[0].split("?")[0])
        root = os.path.realpath(self.folder)
        path = os.path.realpath(os.path.join(root, rel))
        if os.path.commonpath([root, path]) != root or path == root or not os.path.isfile(path):
            return None
        return os.path.relpath(path, root).replace(os.sep, "/")

    def slug(self, text):
        base = re.sub(r"[^\w-]+", "-", re.sub(r"<[^>]+>", "", html.unescape(text)).lower()).strip("-") or "s"
        s, n = base, 1
        while s in self.heading_ids:
            n += 1
            s = f"{base}-{n}"
        self.heading_ids.add(s)
        return s


def anchor(name):
    """``name`` as a fragment identifier: runs of anything but word characters and '-' become '-'."""
    return re.sub(r"[^\w-]+", "-", name)


def _fig_id(name):
    return "fig-" + anchor(name)


def _image(ctx, src, alt):
    """An ``<img>`` with the file embedded, or a note in words if it cannot be (never a src that loads)."""
    name = ctx.local(src)
    data = None
    if name is not None:
        try:
            with open(os.path.join(ctx.folder, name), "rb") as fh:
                data = fh.read()
        except OSError:
            data = None
    mime = next((m for sig, m in _IMAGE_TYPES if data and data.startswith(sig)), None)
    if mime is None:
        why = "not a file in the report folder" if name is None else "not a PNG, JPEG or GIF image"
        return f'<span class="notice">[figure {html.escape(alt or src)}: {code_html(src)} is {why}]</span>'
    ident = "" if name in ctx.shown else f' id="{_fig_id(name)}"'
    ctx.shown.add(name)
    size = ""
    if mime == "image/png" and len(data) >= 24:
        w, h = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
        size = f' width="{w}" height="{h}"'
    return (f'<img src="data:{mime};base64,{base64.b64encode(data).decode("ascii")}"'
            f' alt="{html.escape(alt, quote=True)}"{size}{ident}>')


def figure_html(ctx, src, alt, caption=None):
    """A ``<figure>``: the embedded image and its caption (the file name by default)."""
    img = _image(ctx, src, alt)
    cap = caption if caption is not None else code_html(ctx.local(src) or src)
    return f"<figure>{img}<figcaption>{cap}</figcaption></figure>"


def code_html(text):
    """``text`` as escaped inline code."""
    return f"<code>{html.escape(str(text))}</code>"


# -- Markdown -> HTML ---------------------------------------------------------------------------------------

def markdown_to_html(text, folder="."):
    """Convert the Markdown the report writes to HTML, embedding images found in ``folder``.

    Supported: ATX headings, paragraphs, pipe tables, ``-`` / ``*`` / numbered lists (nested by
    indentation), fenced code, ``---`` rules, ``>`` quotes; inline ``code``, **bold**, *italic*,
    [links](href) and ![images](file.png). All text is HTML-escaped; an image that is not a file in
    ``folder`` is shown as a note, never as a ``src`` that loads, and links other than relative ones and
    ``#anchors`` are shown as text.

    Parameters
    ----------
    text : str
    folder : str or os.PathLike
        Where relative image paths are looked up.

    Returns
    -------
    str

    Examples
    --------
    >>> markdown_to_html("# A & B\\n\\n- **x** <y>")
    '<h1 id="a-b">A &amp; B</h1>\\n<ul><li><strong>x</strong> &lt;y&gt;</li></ul>'
    """
    return blocks(str(text).splitlines(), Context(os.fspath(folder)), shift=0)


_HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
_BULLET = re.compile(r"^(\s*)([-*+]|\d{1,9}[.)])\s+(.*)$")
_FENCE = re.compile(r"^\s{0,3}(```+|~~~+)")
_RULE = re.compile(r"^\s{0,3}([-*_])(\s*\1){2,}\s*$")
_TABLE_SEP = re.compile(r"^\s*\|?\s*:?-{1,}:?\s*(\|\s*:?-{1,}:?\s*)*\|?\s*$")


def blocks(lines, ctx, shift):
    """HTML of Markdown ``lines``; headings moved down by ``shift`` levels and collected in ``ctx.toc``."""
    out = []
    i, n = 0, len(lines)
    while i < n:
        line = lines[i]
        if not line.strip():
            i += 1
            continue
        m = _FENCE.match(line)
        if m:
            j = i + 1
            while j < n and not lines[j].strip().startswith(m.group(1)):
                j += 1
            lang = line.strip()[len(m.group(1)):].strip()
            cls = f' class="language-{html.escape(lang, quote=True)}"' if lang else ""
            out.append(f"<pre><code{cls}>{html.escape(chr(10).join(lines[i + 1:j]))}</code></pre>")
            i = j + 1
            continue
        m = _HEADING.match(line)
        if m:
            level = min(len(m.group(1)) + shift, 6)
            inner = inline_html(m.group(2), ctx)
            ident = ctx.slug(inner)
            if level in (2, 3):
                ctx.toc.append((ident, inner, level))
            out.append(f'<h{level} id="{ident}">{inner}</h{level}>')
            i += 1
            continue
        if _RULE.match(line):
            out.append("<hr>")
            i += 1
            continue
        if _table_start(lines, i):
            j = i + 2
            while j < n and lines[j].strip() and "|" in lines[j]:
                j += 1
            out.append(_table(lines[i], lines[i + 1], lines[i + 2:j], ctx))
            i = j
            continue
        if _BULLET.match(line):
            j = i + 1
            while j < n and (_BULLET.match(lines[j]) or (lines[j].strip() and lines[j][:1].isspace())
                             or (not lines[j].strip() and j + 1 < n and lines[j + 1][:1].isspace()
                                 and lines[j + 1].strip())):
                j += 1
            out.append(_list(lines[i:j], ctx, shift))
            i = j
            continue
        if line.lstrip().startswith(">"):
            j = i
            while j < n and lines[j].lstrip().startswith(">"):
                j += 1
            inner = [re.sub(r"^\s*>\s?", "", ln) for ln in lines[i:j]]
            out.append(f"<blockquote>{blocks(inner, ctx, shift)}</blockquote>")
            i = j
            continue
        j = i + 1
        while j < n and lines[j].strip() and not (_HEADING.match(lines[j]) or _FENCE.match(lines[j])
                                                  or _BULLET.match(lines[j]) or _RULE.match(lines[j])
                                                  or lines[j].lstrip().startswith(">") or _table_start(lines, j)):
            j += 1
        out.append(_paragraph(" ".join(ln.strip() for ln in lines[i:j]), ctx))
        i = j
    return "\n".join(out)


def _table_start(lines, i):
    return "|" in lines[i] and i + 1 < len(lines) and "|" in lines[i + 1] and bool(_TABLE_SEP.match(lines[i + 1]))


def _paragraph(text, ctx):
    m = re.fullmatch(r"!\[([^\]]*)\]\(\s*([^)\s]+)(?:\s+\"[^\"]*\")?\s*\)", text)
    if m:  # an image alone in its paragraph is a figure with its alt text as caption
        return figure_html(ctx, m.group(2), m.group(1), caption=inline_html(m.group(1), ctx) or None)
    return f"<p>{inline_html(text, ctx)}</p>"


def _list(lines, ctx, shift):
    base = len(_BULLET.match(lines[0]).group(1).expandtabs(4))
    ordered = _BULLET.match(lines[0]).group(2)[0] not in "-*+"
    items = []
    for ln in lines:
        m = _BULLET.match(ln)
        if m and len(m.group(1).expandtabs(4)) <= base:
            items.append([m.group(3)])
        elif items:
            items[-1].append(ln)
    html_items = []
    for first, *rest in items:
        # continuation lines without a deeper list join the first; a nested list is rendered as blocks
        k = next((t for t, ln in enumerate(rest) if _BULLET.match(ln)), len(rest))
        head = " ".join([first.strip()] + [ln.strip() for ln in rest[:k] if ln.strip()])
        nested = rest[k:]
        if nested:
            indent = min(len(ln) - len(ln.lstrip()) for ln in nested if ln.strip())
            nested = blocks([ln[indent:] for ln in nested], ctx, shift)
        html_items.append(f"<li>{inline_html(head, ctx)}{nested or ''}</li>")
    tag = "ol" if ordered else "ul"
    return f"<{tag}>" + "".join(html_items) + f"</{tag}>"


def _split_row(line):
    """Cells of a pipe-table row; ``|`` inside inline code or escaped as ``\\|`` does not split."""
    s = line.strip()
    if s.startswith("|"):
        s = s[1:]
    if s.endswith("|") and not s.endswith("\\|"):
        s = s[:-1]
    cells, cur, in_code, k = [], [], 0, 0
    while k < len(s):
        ch = s[k]
        if ch == "\\" and k + 1 < len(s) and s[k + 1] == "|":
            cur.append("\\|")
            k += 2
            continue
        if ch == "`":
            run = len(s[k:]) - len(s[k:].lstrip("`"))
            in_code = 0 if in_code == run else (run if not in_code else in_code)
            cur.append("`" * run)
            k += run
            continue
        if ch == "|" and not in_code:
            cells.append("".join(cur).strip())
            cur = []
        else:
            cur.append(ch)
        k += 1
    cells.append("".join(cur).strip())
    return cells


def _table(header, sep, rows, ctx):
    aligns = []
    for c in _split_row(sep):
        c = c.strip()
        aligns.append(' style="text-align:center"' if c.startswith(":") and c.endswith(":") else
                      ' style="text-align:right"' if c.endswith(":") else "")
    head = _split_row(header)
    ncol = len(head)
    aligns = (aligns + [""] * ncol)[:ncol]
    th = "".join(f"<th{a}>{inline_html(c, ctx)}</th>" for c, a in zip(head, aligns))
    body = []
    for r in rows:
        cells = (_split_row(r) + [""] * ncol)[:ncol]
        body.append("<tr>" + "".join(f"<td{a}>{inline_html(c, ctx)}</td>" for c, a in zip(cells, aligns)) + "</tr>")
    return f'<div class="scroll"><table><tr>{th}</tr>{"".join(body)}</table></div>'


_PH = "\ue000{}\ue001"  # placeholders (private-use characters) for pieces already converted
_PH_RE = re.compile("\ue000(\\d+)\ue001")
_INLINE = re.compile(
    r"(?P<img>!\[(?P<ialt>[^\]]*)\]\(\s*(?P<isrc>[^)\s]+)(?:\s+\"[^\"]*\")?\s*\))"
    r"|(?P<link>\[(?P<ltext>[^\]]+)\]\(\s*(?P<lhref>[^)\s]+)(?:\s+\"[^\"]*\")?\s*\))"
    r"|(?P<bold>\*\*(?=\S)(?P<btext>.+?)(?<=\S)\*\*)"
    r"|(?P<ital>(?<![\*\w])\*(?=[^\s*])(?P<itext>.+?)(?<=[^\s*])\*(?![\*\w]))")


def inline_html(text, ctx=None):
    """Inline Markdown to HTML: code spans, images, links, bold and italic; everything else escaped."""
    saved = []

    def keep(s):
        saved.append(s)
        return _PH.format(len(saved) - 1)

    text = text.replace("\ue000", "").replace("\ue001", "")
    text = re.sub(r"(`+)(.+?)(?<!`)\1(?!`)", lambda m: keep(_code_span(m.group(2).strip(), ctx)), text)
    text = re.sub(r"\\([\\`*_\[\]()#+\-.!|<>{}])", lambda m: keep(html.escape(m.group(1))), text)
    text = _inline_spans(text, ctx, keep)
    for _ in range(4):  # placeholders may hold placeholders (code inside bold inside a link)
        text = _PH_RE.sub(lambda m: saved[int(m.group(1))], text)
    return text


def _code_span(code, ctx):
    """Inline code; one that names a CSV file of the folder links to its table on the page."""
    if ctx is not None and code.lower().endswith(".csv") and ctx.local(code) == code:
        return f'<a href="#table-{anchor(code)}">{code_html(code)}</a>'
    return code_html(code)


def _inline_spans(text, ctx, keep):
    out, pos = [], 0
    for m in _INLINE.finditer(text):
        out.append(html.escape(text[pos:m.start()]))
        pos = m.end()
        if m.group("img"):
            out.append(keep(_image(ctx, m.group("isrc"), m.group("ialt")) if ctx is not None
                            else html.escape(f"[figure: {m.group('ialt')}]")))
        elif m.group("link"):
            out.append(keep(_link(ctx, m.group("lhref"), _inline_spans(m.group("ltext"), ctx, keep))))
        elif m.group("bold"):
            inner = _inline_spans(m.group("btext"), ctx, keep)
            style = VERDICT_STYLE.get(m.group("btext").strip())
            cls = f' class="v v-{style[0]}"' if style else ""
            out.append(keep(f"<strong{cls}>{inner}</strong>"))
        else:
            out.append(keep(f"<em>{_inline_spans(m.group('itext'), ctx, keep)}</em>"))
    out.append(html.escape(text[pos:]))
    return "".join(out)


def _link(ctx, href, label):
    """A link that loads nothing: an in-page anchor for a figure, a relative link to a file, or text."""
    if href.startswith("#"):
        return f'<a href="{html.escape(href, quote=True)}">{label}</a>'
    name = ctx.local(href) if ctx is not None else None
    if name is not None and name.lower().endswith((".png", ".jpg", ".jpeg", ".gif")):
        return f'<a href="#{_fig_id(name)}">{label}</a>'
    if name is not None or (ctx is None and not re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:|^[/\\]", href)):
        return f'<a href="{html.escape(href, quote=True)}">{label}</a>'
    return f"{label} ({code_html(href)})"

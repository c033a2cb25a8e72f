"""The report's Markdown as safe, self-contained HTML, by ``markdown-it-py`` (CommonMark and pipe tables).

Rules added to its renderer, and nothing else:

- raw HTML in the Markdown is escaped (``html=False``), every text is escaped;
- headings get ids (unique, from their text) and are listed for the table of contents;
- an image that is a file inside the report folder is embedded as a ``data:`` URI (PNG re-encoded as lossless
  WebP, a third smaller for figures; JPEG / GIF as they are) in a ``<figure>`` with an id; any other image is a
  note in words, never a ``src`` that loads;
- links: relative links to files in the folder stay (a link to an embedded figure jumps to it), ``#anchors``
  stay, everything else (``http:``, ``javascript:`` …) is shown as text; inline code naming a CSV table or a
  figure of the folder links to it on the page;
- ``**verdict**`` becomes a coloured label with a symbol and the words (:data:`VERDICT_STYLE`);
- the formula of φ (:data:`PHI_FORMULA`, as the README writes it) is typeset as MathML.
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import os
import re
import urllib.parse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterable

__all__ = ["markdown_to_html", "Context", "render", "figure_html", "code_html", "anchor", "VERDICT_STYLE",
           "PHI_FORMULA", "PHI_MATHML", "webp_of", "webp_entry", "remember_webp"]

#: verdict -> (css class, symbol); the symbol and the words carry the outcome, the colour only repeats it
VERDICT_STYLE = {
    "reproduces": ("good", "✓"), "check holds": ("good", "✓"),
    "partly": ("part", "◐"),
    "does not reproduce": ("bad", "✗"), "check FAILS": ("bad", "✗"),
    "inconclusive": ("none", "?"), "not applicable": ("none", "–"),
    "not computed": ("none", "–"),
}

#: φ as the README writes it (plain text) and as the page shows it (MathML Core, rendered by every current browser).
PHI_FORMULA = "φ(i, j) = ‖U₁^(i)ᵀ U₂^(j)‖²_F / min(i, j)"
PHI_MATHML = ('<math display="inline"><mi>φ</mi><mo>(</mo><mi>i</mi><mo>,</mo><mi>j</mi><mo>)</mo><mo>=</mo>'
              '<mfrac><msubsup><mrow><mo>‖</mo><msup><msubsup><mi>U</mi><mn>1</mn><mrow><mo>(</mo><mi>i</mi><mo>)'
              '</mo></mrow></msubsup><mo>⊤</mo></msup><msubsup><mi>U</mi><mn>2</mn><mrow><mo>(</mo><mi>j</mi>'
              '<mo>)</mo></mrow></msubsup><mo>‖</mo></mrow><mi>F</mi><mn>2</mn></msubsup><mrow><mo>min</mo>'
              '<mo>(</mo><mi>i</mi><mo>,</mo><mi>j</mi><mo>)</mo></mrow></mfrac></math>')

_IMAGE_TYPES = ((b"\x89PNG\r\n\x1a\n", "image/png"), (b"\xff\xd8\xff", "image/jpeg"), (b"GIF87a", "image/gif"),
                (b"GIF89a", "image/gif"))


class Context:
    """What the conversion needs to know about the folder, and what it has shown.

    Attributes
    ----------
    folder : str
    shown : set of str
        Figures embedded so far (each gets its id once).
    heading_ids : set of str
        Ids given so far (new ones are made unique against these).
    toc : list of (str, str, int)
        ``(id, text, level)`` of every heading rendered.
    """

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = os.path.abspath(folder)
        self.shown: set[str] = set()
        self.heading_ids: set[str] = set()
        self.toc: list[tuple[str, str, int]] = []

    def local(self, src: str) -> str | None:
        """The file name of ``src`` if it is a plain relative path to a file inside the folder, else None."""
        if not src or re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:|^[/\\#]", src):
            return None
        rel = urllib.parse.unquote(src.split("#")[0].split("?")[0])
        root = os.path.realpath(self.folder)
        path = os.path.realpath(os.path.join(root, rel))
        if os.path.commonpath([root, path]) != root or path == root or not os.path.isfile(path):
            return None
        return os.path.relpath(path, root).replace(os.sep, "/")

    def slug(self, text: str) -> str:
        """A unique id for a heading of this text."""
        base = re.sub(r"[^\w-]+", "-", re.sub(r"<[^>]+>", "", html.unescape(text)).lower()).strip("-") or "s"
        s, n = base, 1
        while s in self.heading_ids:
            n += 1
            s = f"{base}-{n}"
        self.heading_ids.add(s)
        return s


def anchor(name: str) -> str:
    """``name`` as a fragment identifier: runs of anything but word characters and '-' become '-'."""
    return re.sub(r"[^\w-]+", "-", name)


def _fig_id(name):
    return "fig-" + anchor(name)


def code_html(text: str) -> str:
    """``text`` as escaped inline code."""
    return f"<code>{html.escape(str(text))}</code>"


#: Encodings kept by :func:`webp_of` (a report has about 20 figures).
_WEBP_MAX = 64
#: Lossless WebP encodings already made, by the PNG's SHA-256 (:func:`webp_of`, :func:`remember_webp`).
_WEBP: dict[str, tuple[bytes, tuple[int, int]] | None] = {}


def webp_of(png: bytes) -> tuple[bytes, tuple[int, int]] | None:
    """A PNG's pixels as lossless WebP, and the image size (None when Pillow cannot): the same image, fewer bytes.

    Parameters
    ----------
    png : bytes

    Returns
    -------
    (bytes, (width, height)) or None
    """
    key = hashlib.sha256(png).hexdigest()
    if key not in _WEBP:
        try:
            from PIL import Image

            with Image.open(io.BytesIO(png)) as im:
                out = io.BytesIO()
                im.save(out, format="WEBP", lossless=True, method=6)
                _WEBP[key] = (out.getvalue(), im.size)
        except (ImportError, OSError, ValueError):
            _WEBP[key] = None
        _trim()
    return _WEBP[key]


def _trim():
    """At most :data:`_WEBP_MAX` encodings kept, the oldest dropped (a notebook writing many reports)."""
    while len(_WEBP) > _WEBP_MAX:
        del _WEBP[next(iter(_WEBP))]


def webp_entry(path: str) -> tuple[str, tuple[bytes, tuple[int, int]] | None]:
    """``(key, encoding)`` of the PNG file ``path`` for :func:`remember_webp` (made where the figure was saved,
    e.g. in a figure worker, so that the page does not encode it again)."""
    with open(path, "rb") as fh:
        png = fh.read()
    return hashlib.sha256(png).hexdigest(), webp_of(png)


def remember_webp(entries: Iterable[tuple[str, tuple[bytes, tuple[int, int]] | None]]) -> None:
    """Keep encodings made elsewhere (:func:`webp_entry`): the page embeds them without encoding again."""
    _WEBP.update(entries)
    _trim()


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
    if mime == "image/png":
        w, h = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
        size = f' width="{w}" height="{h}"'
        webp = webp_of(data)
        if webp is not None:
            data, mime = webp[0], "image/webp"
    return (f'<img src="data:{mime};base64,{base64.b64encode(data).decode("ascii")}"'
            f' alt="{html.escape(alt, quote=True)}"{size}{ident}>')


def figure_html(ctx: Context, src: str, alt: str, caption: str | None = None) -> str:
    """A ``<figure>``: the embedded image and its caption (the file name by default)."""
    img = _image(ctx, src, alt)
    cap = caption if caption is not None else code_html(ctx.local(src) or src)
    return f"<figure>{img}<figcaption>{cap}</figcaption></figure>"


def _parser():
    from markdown_it import MarkdownIt

    md = MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False}).enable("table")
    md.validateLink = lambda url: True  # every link reaches the rules below, which decide

    def heading_open(self, tokens, idx, options, env):
        ctx, shift = env["ctx"], env["shift"]
        text = tokens[idx + 1].content.replace("`", "")  # the words, without Markdown's code marks
        level = min(int(tokens[idx].tag[1]) + shift, 6)
        ident = ctx.slug(text)
        ctx.toc.append((ident, html.escape(text), level))
        env["levels"].append(level)
        return f'<h{level} id="{ident}">'

    def heading_close(self, tokens, idx, options, env):
        return f"</h{env['levels'].pop()}>\n"

    def image(self, tokens, idx, options, env):
        tok = tokens[idx]
        alt = "".join(c.content for c in tok.children or ()) or tok.content
        return figure_html(env["ctx"], tok.attrGet("src") or "", alt, caption=html.escape(alt) or None)

    def link_open(self, tokens, idx, options, env):
        href = tokens[idx].attrGet("href") or ""
        ctx = env["ctx"]
        name = ctx.local(href)
        if href.startswith("#") and re.fullmatch(r"#[\w-]+", href):
            target = href
        elif name is not None:
            target = "#" + _fig_id(name) if name.lower().endswith((".png", ".jpg", ".jpeg", ".gif")) \
                else urllib.parse.quote(name)
        else:
            env["dropped"].append(href)  # shown as its text and address, not as a link that leaves the page
            return ""
        env["dropped"].append(None)
        return f'<a href="{html.escape(target, quote=True)}">'

    def link_close(self, tokens, idx, options, env):
        href = env["dropped"].pop()
        return "</a>" if href is None else f" ({html.escape(href)})"

    def strong_open(self, tokens, idx, options, env):
        inner = tokens[idx + 1] if idx + 2 < len(tokens) and tokens[idx + 2].type == "strong_close" else None
        if inner is not None and inner.type == "text" and inner.content in VERDICT_STYLE:
            cls, sym = VERDICT_STYLE[inner.content]
            env["verdict"].append(True)
            return f'<strong class="v v-{cls}">{sym}&nbsp;'
        env["verdict"].append(False)
        return "<strong>"

    def strong_close(self, tokens, idx, options, env):
        env["verdict"].pop()
        return "</strong>"

    def code_inline(self, tokens, idx, options, env):
        text = tokens[idx].content
        name = env["ctx"].local(text) if not env["dropped"] else None  # never a link inside a link
        if name is not None and name.lower().endswith(".csv"):  # a table of the folder: jump to it on the page
            return f'<a href="#table-{anchor(name)}">{code_html(text)}</a>'
        if name is not None and name.lower().endswith((".png", ".jpg", ".jpeg", ".gif")):
            return f'<a href="#{_fig_id(name)}">{code_html(text)}</a>'
        return code_html(text)

    for name, rule in (("code_inline", code_inline), ("heading_open", heading_open), ("heading_close", heading_close),
                       ("image", image),
                       ("link_open", link_open), ("link_close", link_close), ("strong_open", strong_open),
                       ("strong_close", strong_close)):
        md.add_render_rule(name, rule)
    return md


def render(text: str, ctx: Context, *, shift: int = 0) -> str:
    """Render Markdown ``text`` to HTML with the rules of this module.

    Parameters
    ----------
    text : str
    ctx : Context
    shift : int
        Added to every heading's level (the page's own ``<h1>`` comes first).

    Returns
    -------
    str
    """
    env = {"ctx": ctx, "shift": shift, "levels": [], "dropped": [], "verdict": []}
    out = _parser().render(str(text), env)
    out = out.replace(html.escape(PHI_FORMULA, quote=False), PHI_MATHML)
    # no line breaks between block tags, except inside preformatted code
    parts = re.split(r"(<pre>.*?</pre>)", out, flags=re.S)
    return "".join(p if p.startswith("<pre>") else re.sub(r">\n+<", "><", p) for p in parts).strip()


def markdown_to_html(text: str, folder: str | os.PathLike[str] = ".") -> str:
    """Convert the Markdown the report writes to HTML, embedding images found in ``folder``.

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
    '<h1 id="a-b">A &amp; B</h1><ul><li><strong>x</strong> &lt;y&gt;</li></ul>'
    """
    return render(text, Context(os.fspath(folder)))

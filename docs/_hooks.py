"""MkDocs hooks: Sphinx roles in docstrings become API links; TeX becomes MathML.

The docstrings are Google style but cross-reference with Sphinx roles
(``:func:`methods` ``, ``:class:`Stage` ``), which Markdown renders literally as
``:func:<code>methods</code>``. Names that are public in ``neuralpde`` or ``solvers`` become
(optional) autorefs links; anything else keeps its code span and loses the role.

Formulas (``\\( ... \\)`` inline, ``\\[ ... \\]`` display, marked by pymdownx.arithmatex)
are converted to MathML by latex2mathml while the site is built. Browsers render MathML
natively, so the site shows its mathematics offline, with no script and no CDN. A formula
latex2mathml cannot convert fails the build, naming the page and the formula.
"""

from __future__ import annotations

import html
import re

from latex2mathml.converter import convert
from mkdocs.exceptions import PluginError

import neuralpde
import solvers

_ROLE = re.compile(r":(?:func|class|meth|mod|attr|data|exc|obj):<code>([\w.]+)</code>")
_PACKAGES = {"neuralpde": neuralpde, "solvers": solvers}


def _identifier(name: str) -> str | None:
    """The fully qualified API name that ``name`` refers to, or None."""
    if name in _PACKAGES:
        return name
    head, _, rest = name.partition(".")
    if head in _PACKAGES and rest:
        obj = _PACKAGES[head]
        for part in rest.split("."):
            if not hasattr(obj, part):
                return None
            obj = getattr(obj, part)
        return name
    found = [pkg for pkg, mod in _PACKAGES.items() if name in getattr(mod, "__all__", ())]
    return f"{found[0]}.{name}" if len(found) == 1 else None


def _replace(match: re.Match) -> str:
    name = match[1]
    ident = _identifier(name)
    if ident is None:
        return f"<code>{name}</code>"
    return f'<autoref identifier="{ident}" optional><code>{name}</code></autoref>'


# arithmatex's generic output: the TeX, HTML-escaped, inside a span (inline) or a div (display).
_INLINE = re.compile(r'<span class="arithmatex">\\\((.*?)\\\)</span>', re.S)
_DISPLAY = re.compile(r'<div class="arithmatex">\\\[(.*?)\\\]</div>', re.S)
# A heading's formula reaches the table of contents as escaped text, without the span.
_TOC_INLINE = re.compile(r"\\\((.*?)\\\)", re.S)
# latex2mathml passes a command it does not know through as text (<mi>\foo</mi>).
_UNKNOWN = re.compile(r">[^<]*\\[A-Za-z]+")
# A minus or plus right after another operator: "[-1, 1]", "= -K", "\le -b".
_SIGN = re.compile(r"<mo(?: [^>]*)?>([^<]*)</mo><mo>(&#x02212;|&#x0002B;)</mo>")
_CLOSING = set(")]}|\u2016\u27e9")


def _sign(match: re.Match) -> str:
    # TeX makes a binary sign after an opening delimiter, a relation or punctuation a sign
    # of what follows (The TeXbook, ch. 18, rule 5); MathML Core would space it as an infix
    # operator ("[ − 1, 1]") unless it is marked prefix. After a closing delimiter it stays
    # binary: "(a) - b".
    if html.unescape(match[1]) in _CLOSING:
        return match[0]
    head = match[0][: -len(match[2]) - len("<mo></mo>")]
    return f'{head}<mo form="prefix">{match[2]}</mo>'


# "/", "|" and "\\|" as latex2mathml writes them when they are not \left/\right fences.
_ORD = re.compile(r'<mo(?: stretchy="false")?>(&#x0002F;|&#x0007C;|&#x02016;)</mo>')
# Function names: latex2mathml writes \max and \operatorname{diag} as <mo>, which MathML
# Core spaces like a binary operator ("+  max  a"), and \sin x as <mi>sin</mi><mi>x</mi>,
# which it sets with no gap ("sinx"). TeX sets a name with a thin space before an ordinary
# argument and none before a delimiter (The TeXbook, ch. 18); so do these two passes.
_NAME_MO = re.compile(r"<mo>([A-Za-z]{2,})</mo>")
_NAME_GAP = re.compile(
    r"(?<!<msub>)(?<!<msup>)(?<!<msubsup>)(?<!<munder>)(?<!<munderover>)"
    r"(<mi>[A-Za-z]{2,}</mi>)(?=<mi|<mn|<mrow|<msub|<msup|<mfrac|<msqrt)"
)


# \lvert and \rvert reach latex2mathml's output as two identical "|" operators, spaced as
# infix ("|1 + ihω |  > 1"). As \left and \right they become an opening and a closing
# fence around their content, and a script attaches to the whole: |R|^2.
_BARS = re.compile(r"(\\(?:left|right|[bB]igg?[lr]?)\s*)?\\([lr])(vert|Vert)(?![A-Za-z])")


def _bar(match: re.Match) -> str:
    if match[1]:  # already sized or fenced
        return match[0]
    return f"\\{'left' if match[2] == 'l' else 'right'}\\{match[2]}{match[3]}"


def _mathml(tex: str, display: str, where: str) -> str:
    tex = html.unescape(tex).strip()
    try:
        out = convert(_BARS.sub(_bar, tex), display=display)
    except Exception as err:
        raise PluginError(f"{where}: latex2mathml cannot convert \\({tex}\\): {err!r}") from err
    if _UNKNOWN.search(out):
        raise PluginError(f"{where}: \\({tex}\\) uses a TeX command latex2mathml does not know")
    out = _SIGN.sub(_sign, out.replace(' xmlns="http://www.w3.org/1998/Math/MathML"', ""))
    # TeX sets "/" and a bare "|" or "\\|" as ordinary symbols ("2/z", "|1 + ihω| > 1");
    # MathML Core would space them as operators.
    out = _ORD.sub(r'<mo lspace="0" rspace="0" stretchy="false">\1</mo>', out)
    out = _NAME_MO.sub(r"<mi>\1</mi>", out)
    return _NAME_GAP.sub(r'\1<mspace width="0.1667em"></mspace>', out)


def _toc_to_mathml(items, where: str) -> None:
    for item in items:
        item.title = _TOC_INLINE.sub(lambda m: _mathml(m[1], "inline", where), item.title)
        _toc_to_mathml(item.children, where)


def on_page_content(content: str, page, **kwargs) -> str:
    where = page.file.src_uri
    content = _DISPLAY.sub(lambda m: _mathml(m[1], "block", where), content)
    content = _INLINE.sub(lambda m: _mathml(m[1], "inline", where), content)
    _toc_to_mathml(page.toc, where)
    return _ROLE.sub(_replace, content)

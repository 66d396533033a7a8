"""MkDocs hook: turn Sphinx roles left in docstrings into links of the API reference.

The docstrings are Google style but cross-reference with Sphinx roles
(``:func:`methods` ``, ``:class:`Stage` ``), which Markdown renders literally as
``:func:<code>methods</code>``. Names that are public in ``neuralpde`` or ``solvers`` become
(optional) autorefs links; anything else keeps its code span and loses the role.
"""

from __future__ import annotations

import re

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


def on_page_content(html: str, **kwargs) -> str:
    return _ROLE.sub(_replace, html)

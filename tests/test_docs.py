"""The documentation site: strict build, docstrings with shapes, runnable examples, solver table."""

from __future__ import annotations

import html
import inspect
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from torch import Tensor, nn

import neuralpde
import solvers

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PACKAGES = (neuralpde, solvers)


def _run(args: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    # One thread: on a shared machine OpenMP threads fighting for cores make a run erratic.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NO_MKDOCS_2_WARNING": "1"}
    return subprocess.run(
        args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def _mkdocs_build(cwd: Path, site: Path) -> subprocess.CompletedProcess:
    return _run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)], cwd)


# --- the site builds, and fails on a broken reference ------------------------------------


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The site, built once with ``mkdocs build --strict`` for every test that reads it."""
    site = tmp_path_factory.mktemp("docs") / "site"
    res = _mkdocs_build(ROOT, site)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return site


@pytest.mark.slow
def test_mkdocs_build_strict(site):
    # The API pages really were generated from the docstrings: every public object has
    # its entry (an anchor named after it), submodules' exports included.
    for mod in _public_modules():
        top = mod.__name__.split(".")[0]
        api = (site / "api" / top / "index.html").read_text()
        for name in mod.__all__:
            assert f'id="{mod.__name__}.{name}"' in api, f"{mod.__name__}.{name}"
    # Snippet lines were expanded, not shown (a formatter once rewrote them to "--8 < --").
    for built in site.rglob("*.html"):
        text = built.read_text()
        assert "--8&lt;--" not in text and "--8 &lt; --" not in text, built
    # Sphinx roles in docstrings became links, not literal ":func:" text.
    api = (site / "api" / "solvers" / "index.html").read_text()
    assert ":func:" not in api and 'href="#solvers.methods"' in api
    # Every tutorial page made it into the site, with its whole script inlined: the
    # script's last line appears in the page's text (highlighting tags stripped).
    for script in sorted(DOCS.glob("tutorials/[0-9][0-9]_*.py")):
        if not script.with_suffix(".md").exists():
            continue  # reported by tests/test_tutorials.py
        page = site / "tutorials" / script.stem / "index.html"
        assert page.exists(), page
        text = html.unescape(re.sub(r"<[^>]+>", "", page.read_text()))
        last = [line.strip() for line in script.read_text().splitlines() if line.strip()][-1]
        assert last in text, f"{script.name} is not inlined in its page"


# What a reader sees as text: code may show TeX on purpose (a tutorial's source), and
# scripts and styles are not text, so all of them are cut out first.
_NOT_TEXT = re.compile(r"<(pre|code|script|style)\b.*?</\1>", re.S)
# Delimiters of arithmatex (\( \) \[ \] $$) and any TeX command (\theta, \frac ...).
_RAW_TEX = re.compile(r"\\[()\[\]]|\$\$|\\[A-Za-z]+")


def _reader_text(page: str) -> str:
    return html.unescape(re.sub(r"<[^>]+>", " ", _NOT_TEXT.sub(" ", page)))


@pytest.mark.slow
def test_formulas_are_mathml_without_the_network(site):
    """Every formula is MathML in the page itself: no raw TeX, no script to fetch."""
    for built in sorted(site.rglob("*.html")):
        page = built.read_text()
        raw = _RAW_TEX.findall(_reader_text(page))
        assert not raw, f"{built.relative_to(site)} shows raw TeX: {raw[:5]}"
        assert 'class="arithmatex"' not in page and "mathjax" not in page.lower(), built
    # Each formula of a page's source became one MathML element of its article, inline or
    # block as written (headings' formulas also reach the table of contents, outside it).
    checked = 0
    for source in sorted(DOCS.rglob("*.md")):
        text = source.read_text()
        inline, block = text.count("\\("), text.count("\\[")
        if not inline + block:
            continue
        rel = source.relative_to(DOCS).with_suffix("")
        built = site / ("index.html" if rel.name == "index" else rel / "index.html")
        if rel.name == "index" and rel.parent != Path("."):
            built = site / rel.parent / "index.html"
        article = re.search(r"<article\b.*?</article>", built.read_text(), re.S)[0]
        assert article.count('<math display="inline"') == inline, source.name
        assert article.count('<math display="block"') == block, source.name
        checked += 1
    assert checked >= 5


def _hooks():
    import importlib.util

    spec = importlib.util.spec_from_file_location("docs_hooks", DOCS / "_hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_math_hook_typesets_like_tex_and_refuses_unknown_commands():
    from mkdocs.exceptions import PluginError

    mathml = _hooks()._mathml
    # A sign after an opening delimiter or a relation is a sign, not a binary minus.
    assert '<mo form="prefix">&#x02212;</mo><mn>1</mn>' in mathml("[-1, 1]", "inline", "p")
    assert 'form="prefix"' not in mathml("(a) - b", "inline", "p")
    # Function names are names, with a thin space before an argument (none before "(").
    assert "<mi>max</mi><mspace" in mathml(r"\max a", "inline", "p")
    assert "<mi>diag</mi><mo" in mathml(r"\operatorname{diag}(a)", "inline", "p")
    assert mathml(r"\frac{1}{2}", "block", "p").startswith('<math display="block">')
    # \lvert ... \rvert are an opening and a closing fence; a script takes the whole.
    bars = mathml(r"\frac{2}{\lVert K \rVert_2^2} + \lvert R \rvert^2", "inline", "p")
    assert bars.count('form="prefix"') == bars.count('form="postfix"') == 2
    assert bars.count("<msubsup><mrow><mo") == 1 and bars.count("<msup><mrow><mo") == 1
    # A command latex2mathml does not know fails the build, naming page and formula.
    with pytest.raises(PluginError, match=r"concepts.md.*\\notacommand"):
        mathml(r"x + \notacommand y", "inline", "concepts.md")
    with pytest.raises(PluginError, match="cannot convert"):
        mathml("x^{", "inline", "concepts.md")


def _nav_files(entries) -> list[str]:
    """Every page of an mkdocs ``nav`` (nested lists of ``{title: page}`` or ``page``)."""
    found = []
    for entry in entries:
        value = next(iter(entry.values())) if isinstance(entry, dict) else entry
        found += _nav_files(value) if isinstance(value, list) else [value]
    return found


def _nav() -> list:
    return yaml.safe_load((ROOT / "mkdocs.yml").read_text())["nav"]


def test_navigation_lists_each_page_once():
    files = _nav_files(_nav())
    assert len(files) == len(set(files)), sorted(f for f in files if files.count(f) > 1)
    assert set(files) == {p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md")}


@pytest.mark.slow
def test_built_navigation_has_no_duplicate_entries(site):
    page = (site / "index.html").read_text()
    primary = page[page.index("md-sidebar--primary") : page.index("md-sidebar--secondary")]
    # Links to pages; the current page's own headings ("#install") are not pages.
    links = re.findall(r'<a href="([^"#]*)" class="md-nav__link', primary)
    assert len(links) == len(set(links)), sorted(x for x in links if links.count(x) > 1)
    assert len(links) == len(_nav_files(_nav()))  # the home page's link is "."


@pytest.mark.slow
def test_mkdocs_build_fails_on_missing_reference(tmp_path):
    """The strict build is only worth having if a dangling reference fails it."""
    shutil.copy(ROOT / "mkdocs.yml", tmp_path / "mkdocs.yml")
    shutil.copytree(DOCS, tmp_path / "docs")
    for pkg in ("neuralpde", "solvers"):
        (tmp_path / pkg).symlink_to(ROOT / pkg, target_is_directory=True)
    page = tmp_path / "docs" / "concepts.md"
    # An API object that does not exist, and a page that does not exist.
    broken = "[a missing object][neuralpde.NoSuchThing], [a missing page](no-such-page.md)"
    page.write_text(page.read_text() + f"\n\nSee {broken}.\n")
    res = _mkdocs_build(tmp_path, tmp_path / "site")
    assert res.returncode != 0
    # Strict mode reports every warning before it aborts: both must be named.
    log = res.stdout + res.stderr
    assert "neuralpde.NoSuchThing" in log and "no-such-page.md" in log, log[-3000:]


# --- docstrings ----------------------------------------------------------------------------

# A shape in a docstring: the word, or a parenthesized list starting with a named axis, as
# in "(batch, c, h, w)", "(n_times, *shape)", "(c,)" or "(c_out, c_in, 3, 3)".
SHAPE = re.compile(
    r"\bshape\b|\((?:batch|n_times|n|c|c_in|c_out|channels|\*shape|height|knots)\b\s*[,)]"
)


def _public_modules():
    """The packages and the public submodules they export (e.g. ``neuralpde.stability``)."""
    for pkg in PACKAGES:
        yield pkg
        for name in pkg.__all__:
            if inspect.ismodule(getattr(pkg, name)):
                yield getattr(pkg, name)


def _public_objects() -> list:
    # A list, not a generator: pytest 9.2 deprecates a non-Collection iterable passed to
    # parametrize (PytestRemovedIn10Warning, an error under filterwarnings = "error").
    return [
        pytest.param(mod, name, id=f"{mod.__name__}.{name}")
        for mod in _public_modules()
        for name in mod.__all__
        if not inspect.ismodule(getattr(mod, name))
    ]


def _own_methods(cls: type) -> dict[str, object]:
    """Public functions defined by the class itself (not inherited, not dunder)."""
    return {
        name: fn
        for name, fn in vars(cls).items()
        if not name.startswith("_") and inspect.isfunction(fn)
    }


def _takes_tensors(fn) -> bool:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    # Annotations are strings under `from __future__ import annotations`.
    return any(re.search(r"Tensor|State", str(p.annotation)) for p in params)


def test_packages_have_docstrings():
    modules = list(_public_modules())
    assert len(modules) > len(PACKAGES) or all(
        not inspect.ismodule(getattr(p, n)) for p in PACKAGES for n in p.__all__
    )
    for mod in modules:
        assert mod.__doc__ and mod.__doc__.strip(), mod.__name__


@pytest.mark.parametrize("pkg, name", _public_objects())
def test_public_object_has_docstring(pkg, name):
    obj = getattr(pkg, name)
    # A class's own __doc__ (None when missing; inspect.getdoc would inherit nn.Module's).
    doc = obj.__doc__ if inspect.isclass(obj) else inspect.getdoc(obj)
    assert doc and len(doc.strip()) > 20, f"{pkg.__name__}.{name} has no docstring"
    assert doc.strip().splitlines()[0].strip(), "the first line says what it is"
    if inspect.isclass(obj):
        # forward() and extra_repr() are documented by the class docstring (the contract
        # of every module); any other public method says what it does.
        for meth, fn in _own_methods(obj).items():
            if meth in ("forward", "extra_repr"):
                continue
            assert inspect.getdoc(fn), f"{pkg.__name__}.{name}.{meth} has no docstring"


@pytest.mark.parametrize("pkg, name", _public_objects())
def test_docstring_gives_tensor_shapes(pkg, name):
    """Whatever takes tensors says which shapes (STYLE.md: docstrings with shapes)."""
    obj = getattr(pkg, name)
    if inspect.isclass(obj):
        methods = _own_methods(obj)
        takes = issubclass(obj, nn.Module) or any(map(_takes_tensors, methods.values()))
        text = (obj.__doc__ or "") + "".join(inspect.getdoc(f) or "" for f in methods.values())
    elif callable(obj):
        takes = _takes_tensors(obj)
        text = inspect.getdoc(obj) or ""
    else:
        takes, text = False, ""
    if not takes:
        pytest.skip(f"{name} takes no tensors")
    assert SHAPE.search(text), f"{pkg.__name__}.{name}: the docstring gives no tensor shape"


def test_shape_heuristic_is_not_vacuous():
    """The shape check must reject prose without shapes and see through to real ones."""
    assert not SHAPE.search("Integrates the state (see the concepts page) in time.")
    assert SHAPE.search("y: ``(batch, channels, height, width)``")
    assert SHAPE.search("``(n_times, *shape)``") and SHAPE.search("``(c_out, c_in, 3, 3)``")
    assert not SHAPE.search("the pair ``(f_q, f_p)``")
    assert _takes_tensors(solvers.solve) and not _takes_tensors(neuralpde.count_parameters)


# --- runnable examples of the pages ---------------------------------------------------------

EXAMPLES = sorted((DOCS / "examples").glob("*.py"))


def _snippet_targets() -> set[str]:
    """Every file a page includes with the snippet syntax ``--8<-- "path[:section]"``."""
    found = set()
    for page in DOCS.rglob("*.md"):
        for path in re.findall(r'--8<--\s+"([^":]+)(?::[\w-]+)?"', page.read_text()):
            found.add(path)
    return found


def test_every_example_is_on_a_page():
    assert EXAMPLES, "docs/examples is empty"
    targets = _snippet_targets()
    for script in EXAMPLES:
        assert script.relative_to(ROOT).as_posix() in targets, f"{script.name} is on no page"
    for target in targets:
        assert (ROOT / target).is_file(), f"a page includes the missing file {target}"


@pytest.mark.slow
@pytest.mark.parametrize("script", EXAMPLES, ids=[s.name for s in EXAMPLES])
def test_example_runs(script):
    res = _run([sys.executable, str(script)], ROOT)
    assert res.returncode == 0, res.stderr[-3000:]


# --- the solver table of "Choosing a solver" -----------------------------------------------


def _solver_table(columns: tuple[str, str] = ("method", "scheme")) -> dict[str, dict[str, str]]:
    """The table whose header starts with ``columns``: ``{method: {column header: cell}}``."""
    rows, header = {}, None
    for line in (DOCS / "choosing-a-solver.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[:2] == list(columns):
            header = cells
        elif header and line.startswith("|") and len(cells) == len(header):
            m = re.fullmatch(r"`(\w+)`", cells[0])
            if m:
                rows[m[1]] = dict(zip(header, cells))
        elif header and not line.startswith("|"):
            break
    return rows


def test_solver_table_lists_every_method_with_its_kind():
    table = _solver_table()
    assert set(table) == set(solvers.methods())
    for name, kind in solvers.methods().items():
        assert table[name]["kind"] == kind, name
        reversible = "yes" if kind == "symplectic" else "no"
        assert table[name]["symplectic"] == table[name]["reversible"] == reversible, name
        # Every row names its scheme, with a reference or the scheme it is built from.
        assert len(table[name]["scheme"]) > 10, name
    assert "3/8 rule" in table["rk4"]["scheme"] and "not" in table["rk4"]["scheme"]
    # ... and "What each name computes" gives each one's step and reference.
    steps = _solver_table(("method", "one step"))
    assert set(steps) == set(solvers.methods())
    assert all(row["one step"] and row["reference"] for row in steps.values())
    assert "Kutta (1901)" in steps["rk4"]["reference"]


def test_solver_table_orders_match_the_steppers():
    """The order column is the order the method declares (ours, or torchdiffeq's class)."""
    from torchdiffeq._impl.odeint import SOLVERS

    from solvers._methods import STEPPERS

    table = _solver_table()
    declared = {name: stepper.order for name, stepper in STEPPERS.items()}
    declared.update({n: SOLVERS[n].order for n, k in solvers.methods().items() if k == "fixed"})
    declared.update(
        {n: SOLVERS[n].order for n in ("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun")}
    )
    assert len(declared) >= 15
    for name, order in declared.items():
        assert re.match(rf"{order}\b", table[name]["order"]), (name, order)


def test_solver_table_nfe_is_what_odeint_reports():
    """Fixed-step and symplectic rows give an integer NFE per step: measure it."""
    table = _solver_table()
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    y0 = torch.ones(3, dtype=torch.float64)
    checked = 0
    for name, kind in solvers.methods().items():
        m = re.fullmatch(r"(\d+)(?: \((\d+) \+ (\d+)\))?", table[name]["NFE per step"])
        if kind == "adaptive" or m is None:
            continue
        solver = solvers.Solver(name, step_size=0.25)
        if kind == "symplectic":
            split = (lambda t, p: p, lambda t, q: -q)
            stats = solvers.solve(split, (y0, y0), t, solver).stats
            assert (stats.nfe_q / 4, stats.nfe_p / 4) == (int(m[2]), int(m[3])), name
        else:
            stats = solvers.solve(lambda t, y: -y, y0, t, solver).stats
        assert stats.steps == 4 and stats.nfe == 4 * int(m[1]), (name, stats)
        checked += 1
    assert checked >= 9  # euler ... rk4 and the four symplectic steppers


# --- what each method name computes (the "What each name computes" table) ------------------

F64 = torch.float64
# Butcher tableaus (c, A, b) from the literature, as the page gives them.
_THIRD = 1 / 3
TABLEAUS = {
    "euler": ([0.0], [[]], [1.0]),
    "midpoint": ([0.0, 0.5], [[], [0.5]], [0.0, 1.0]),
    "heun2": ([0.0, 1.0], [[], [1.0]], [0.5, 0.5]),
    "heun3": ([0.0, _THIRD, 2 * _THIRD], [[], [_THIRD], [0.0, 2 * _THIRD]], [0.25, 0.0, 0.75]),
    # Kutta's 3/8 rule (Kutta 1901).
    "rk4": (
        [0.0, _THIRD, 2 * _THIRD, 1.0],
        [[], [_THIRD], [-_THIRD, 1.0], [1.0, -1.0, 1.0]],
        [0.125, 0.375, 0.375, 0.125],
    ),
    "bosh3": ([0.0, 0.5, 0.75], [[], [0.5], [0.0, 0.75]], [2 / 9, 1 / 3, 4 / 9]),
    "fehlberg2": (
        [0.0, 0.5, 1.0],
        [[], [0.5], [1 / 256, 255 / 256]],
        [1 / 512, 255 / 256, 1 / 512],
    ),
    "adaptive_heun": ([0.0, 1.0], [[], [1.0]], [0.5, 0.5]),
}
# The classical Runge-Kutta method, which no method name denotes.
CLASSICAL_RK4 = (
    [0.0, 0.5, 0.5, 1.0],
    [[], [0.5], [0.0, 0.5], [0.0, 0.0, 1.0]],
    [1 / 6, 1 / 3, 1 / 3, 1 / 6],
)


def _rk_step(f, t0: float, y, h: float, tableau) -> tuple[Tensor, list[Tensor]]:
    """One explicit Runge-Kutta step, written out from its tableau."""
    c, A, b = tableau
    k = []
    for ci, row in zip(c, A):
        yi = y + h * sum((a * kj for a, kj in zip(row, k)), torch.zeros_like(y))
        k.append(f(torch.tensor(t0 + ci * h, dtype=F64), yi))
    return y + h * sum(bi * ki for bi, ki in zip(b, k)), k


def _nonlinear(t, y):
    # Nonlinear and time-dependent: one step tells the stage times and weights apart.
    return torch.sin(3 * t) - y**2 + t * y


def _one_step(method: str, f, y0, h: float):
    t = torch.tensor([0.0, h], dtype=F64)
    if solvers.methods()[method] == "adaptive":
        # Tolerances that accept any step, and a first step of h: one step of the pair.
        solver = solvers.Solver(method, rtol=1e3, atol=1e3, options={"first_step": h})
    else:
        solver = solvers.Solver(method, step_size=h)
    return solvers.solve(f, y0, t, solver).y_final


@pytest.mark.parametrize("method", sorted(TABLEAUS))
def test_runge_kutta_methods_are_the_documented_tableaus(method):
    y0 = torch.tensor([0.7, -0.3, 1.1], dtype=F64)
    expected, _ = _rk_step(_nonlinear, 0.0, y0, 0.8, TABLEAUS[method])
    got = _one_step(method, _nonlinear, y0, 0.8)
    torch.testing.assert_close(got, expected, rtol=1e-14, atol=1e-14)


def test_rk4_is_the_three_eighths_rule_not_the_classical_one():
    # y' = t^4 on one step [0, 1] is a quadrature: the 3/8 rule gives (3/81 + 48/81 + 1)/8
    # = 11/54, Simpson's rule (the classical method) 5/24; the integral is 1/5.
    y0 = torch.zeros(1, dtype=F64)
    got = _one_step("rk4", lambda t, y: t**4 + 0 * y, y0, 1.0)
    assert abs(got.item() - 11 / 54) < 1e-15 and abs(got.item() - 5 / 24) > 4e-3
    # On a nonlinear problem the two differ by far more than round-off.
    y0 = torch.tensor([0.7, -0.3, 1.1], dtype=F64)
    classical, _ = _rk_step(_nonlinear, 0.0, y0, 0.8, CLASSICAL_RK4)
    assert (_one_step("rk4", _nonlinear, y0, 0.8) - classical).abs().max() > 0.05


def test_rk4_stage_with_linear_weights_is_the_three_eighths_rule():
    """A network stage with linearly interpolated θ(t) at h = 1: the 3/8 rule, step by step."""
    torch.manual_seed(0)
    rhs = neuralpde.ParabolicRHS(4, steps=3, step_size=1.0, interpolation="linear").double()
    stage = neuralpde.Stage(rhs, method="rk4", step_size=1.0)
    x = torch.randn(2, 4, 6, 6, dtype=F64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = stage(x)
        ours, classical = x, x
        for n in range(3):
            ours, _ = _rk_step(rhs, float(n), ours, 1.0, TABLEAUS["rk4"])
            classical, _ = _rk_step(rhs, float(n), classical, 1.0, CLASSICAL_RK4)
    torch.testing.assert_close(out, ours, rtol=1e-12, atol=1e-12)
    assert (out - classical).abs().max() > 0.1  # 0.31 for this seed


@pytest.mark.parametrize("method", ["fehlberg2", "adaptive_heun"])
def test_fsal_reuses_the_lower_order_point(method):
    """torchdiffeq starts step two with f at the lower-order solution (see the footnote)."""
    y0 = torch.tensor([0.7, -0.3], dtype=F64)
    h, calls = 0.8, []

    def f(t, y):
        calls.append((float(t), y.detach().clone()))
        return _nonlinear(t, y)

    t = torch.tensor([0.0, 2 * h], dtype=F64)
    solver = solvers.Solver(method, rtol=1e3, atol=1e3, options={"first_step": h})
    solvers.solve(f, y0, t, solver)
    y1, k = _rk_step(_nonlinear, 0.0, y0, h, TABLEAUS[method])
    c, A, _ = TABLEAUS[method]
    lower = y0 + h * sum(a * kj for a, kj in zip(A[-1], k))  # where the last stage is taken
    at_h = [y for s, y in calls if abs(s - h) < 1e-12]  # perturbed: just before h
    # One evaluation at t = h, the last stage of step one; none at the accepted y1.
    assert len(at_h) == 1 and c[-1] == 1.0
    torch.testing.assert_close(at_h[0], lower, rtol=1e-14, atol=1e-14)
    assert (at_h[0] - y1).abs().max() > 1e-3


def test_symplectic_methods_are_the_documented_splittings():
    """One step of each symplectic method equals its formula on the page, time included."""

    def f_q(t, p):
        return p * (1 + t)

    def f_p(t, q):
        return -(q**3) + torch.cos(t)

    q0 = torch.tensor([0.4, -1.2], dtype=F64)
    p0 = torch.tensor([0.9, 0.3], dtype=F64)
    h = 0.6
    verlet = [(0.5, "kick"), (1.0, "drift"), (0.5, "kick")]
    w1 = 1 / (2 - 2 ** (1 / 3))
    w0 = 1 - 2 * w1

    def split(q, p, t0, h, rows):
        t = torch.tensor(t0 + h / 2, dtype=F64)
        for a, kind in rows:
            if kind == "drift":
                q = q + a * h * f_q(t, p)
            else:
                p = p + a * h * f_p(t, q)
        return q, p

    expected = {
        "symplectic_euler": split(q0, p0, 0.0, h, [(1.0, "drift"), (1.0, "kick")]),
        "leapfrog": split(q0, p0, 0.0, h, [(1.0, "kick"), (1.0, "drift")]),
        "verlet": split(q0, p0, 0.0, h, verlet),
    }
    q, p = split(q0, p0, 0.0, w1 * h, verlet)
    q, p = split(q, p, w1 * h, w0 * h, verlet)
    expected["yoshida4"] = split(q, p, (w1 + w0) * h, w1 * h, verlet)
    t = torch.tensor([0.0, h], dtype=F64)
    for method, (q1, p1) in expected.items():
        sol = solvers.solve((f_q, f_p), (q0, p0), t, solvers.Solver(method, step_size=h))
        torch.testing.assert_close(sol.y_final[0], q1, rtol=1e-14, atol=1e-14, msg=method)
        torch.testing.assert_close(sol.y_final[1], p1, rtol=1e-14, atol=1e-14, msg=method)

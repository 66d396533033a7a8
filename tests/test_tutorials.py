"""Every tutorial script runs at small size, writes its figures and has a page that shows it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TUTORIALS = ROOT / "docs" / "tutorials"
FIGURES = TUTORIALS / "figures"
SCRIPTS = sorted(TUTORIALS.glob("[0-9][0-9]_*.py"))
IDS = [s.stem for s in SCRIPTS]

# An image on a page: ![alt](figures/NAME.png)
FIGURE_REF = re.compile(r"!\[[^\]]*\]\(figures/([^)\s]+)\)")


def _figures_of(page: Path) -> list[str]:
    return FIGURE_REF.findall(page.read_text())


def test_there_are_tutorials():
    assert SCRIPTS, "no docs/tutorials/NN_*.py found"


@pytest.mark.parametrize("script", SCRIPTS, ids=IDS)
def test_tutorial_has_a_page_that_includes_it(script):
    page = script.with_suffix(".md")
    assert page.exists(), f"{script.name} has no page {page.name}"
    text = page.read_text()
    snippet = f'--8<-- "docs/tutorials/{script.name}"'
    fenced = re.compile(r"```python\s*\n\s*" + re.escape(snippet) + r"\s*\n\s*```")
    assert fenced.search(text), f"{page.name} does not include its script with {snippet}"


@pytest.mark.parametrize("script", SCRIPTS, ids=IDS)
def test_figures_of_the_page_are_committed(script):
    page = script.with_suffix(".md")
    if not page.exists():
        pytest.skip("no page (reported by test_tutorial_has_a_page_that_includes_it)")
    for name in _figures_of(page):
        assert (FIGURES / name).is_file(), f"{page.name} shows figures/{name}, which is missing"


@pytest.mark.slow
@pytest.mark.parametrize("script", SCRIPTS, ids=IDS)
def test_tutorial_runs_small(script, tmp_path):
    env = {
        **os.environ,
        "NEURALPDE_SMALL": "1",
        "NEURALPDE_FIGURES": str(tmp_path),
        "MPLBACKEND": "Agg",
        # One thread: on a shared machine, OpenMP threads competing for the same cores
        # make a small run erratic (up to a hundred times slower).
        "OMP_NUM_THREADS": "1",
    }
    res = subprocess.run(
        [sys.executable, str(script)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert res.returncode == 0, f"{script.name} failed:\n{res.stderr[-4000:]}"
    written = sorted(p.name for p in tmp_path.rglob("*.png"))
    assert written, f"{script.name} wrote no PNG to NEURALPDE_FIGURES"
    prefix = script.name[:3]
    assert all(name.startswith(prefix) for name in written), written
    # The committed figures the page shows under this tutorial's prefix are the ones this
    # script makes (a page may also show another tutorial's figure).
    page = script.with_suffix(".md")
    if page.exists():
        missing = {f for f in _figures_of(page) if f.startswith(prefix)} - set(written)
        assert not missing, f"{page.name} shows figures the script does not write: {missing}"

"""Every benchmark script runs at tiny size and prints its table (numbers not asserted)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = [
    "overhead",
    "layer",
    "solvers_overhead",
    "compile",
    "adaptive",
    "adaptive_driver",
    "gpu",
    "data_path",
    "main_job",
    "seed_sweep",
    "stable_cost",
    "certified_cifar",
]


@pytest.mark.slow
@pytest.mark.parametrize("name", SCRIPTS)
def test_runs_at_tiny_size(name):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / f"{name}.py"), "--tiny"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "machine:" in out.stdout and "command:" in out.stdout
    if name == "gpu" and "skipped: no CUDA" in out.stdout:
        return
    table = [line for line in out.stdout.splitlines() if line.startswith("|")]
    assert len(table) >= 3, out.stdout
    if name == "seed_sweep":  # robustness, not speed: a row per run and a count of them
        assert "runs reach 98 % test accuracy" in out.stdout
        assert "worst swap row" in table[0] and "converged flow" in table[0]
        return
    assert any("ratio" in h or "speedup" in h or "/" in h for h in table[0].split("|"))


@pytest.mark.slow
def test_stable_cost_times_a_candidate_and_names_a_bad_one():
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    script = [sys.executable, str(ROOT / "benchmarks" / "stable_cost.py"), "--tiny"]

    def run(*args):
        return subprocess.run(
            [*script, *args], capture_output=True, text=True, env=env, timeout=600, cwd=ROOT
        )

    mix = "--solver midpoint --rate-bound 0.5 --random-methods midpoint,euler,euler"
    out = run("--archs", "parabolic", "--candidate", mix)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [line for line in out.stdout.splitlines() if line.startswith("| parabolic")]
    names = [r.split("|")[2].split(" (")[0].strip() for r in rows]
    assert names == ["paper", "stable", f"candidate 1: {mix}"]
    assert "random methods midpoint,euler,euler" in rows[2]
    assert f"--candidate '{mix}'" in out.stdout  # the command line pastes back as it ran
    # Each bad candidate is named with its fix, before any timing (no table).
    for candidate, says in [
        ("--random-methods rk4", "does not list the training method"),
        ("--solvr euler", "unrecognized arguments: --solvr"),
        ("--solver 'euler", "No closing quotation"),
        ("--arch hamiltonian", "give this script's --archs"),
        ("--batch-size 64", "--batch-size is set by this script"),
    ]:
        bad = run("--archs", "hamiltonian,parabolic", f"--candidate={candidate}")
        assert bad.returncode != 0, candidate
        assert f"--candidate {candidate!r}" in bad.stderr and says in bad.stderr, bad.stderr
        assert "|" not in bad.stdout, candidate

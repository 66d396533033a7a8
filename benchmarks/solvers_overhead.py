"""Overhead of solvers.solve: our Verlet against a plain Python loop of the same arithmetic.

The state is a pair ``(q, p)`` of ``(64, 32, 32, 32)`` tensors and the right-hand side a
harmonic oscillator (``dq/dt = p``, ``dp/dt = -q``): as cheap as a right-hand side gets,
so whatever the solver adds shows. Both run the same kick–drift–kick formulas; the ratio
is the median of per-round ratios (target <= 1.05), with the finite check on (the default,
one reduction over the output) and off, and with ``save="final"`` (no stacked output).
"plain again" times the plain loop a second time: its ratio is this run's noise floor.

    python benchmarks/solvers_overhead.py [--tiny] [--repeats N] [--threads N]
"""

from __future__ import annotations

import torch
from _common import header, interleaved, median, paired_ratio, parser, setup, table

import solvers


def f_q(t, p):
    return p


def f_p(t, q):
    return -q


def plain_verlet(q, p, h, n):
    for _ in range(n):
        p = p + (0.5 * h) * f_p(None, q)
        q = q + h * f_q(None, p)
        p = p + (0.5 * h) * f_p(None, q)
    return q, p


def main() -> None:
    args = parser(__doc__.splitlines()[0]).parse_args()
    setup(args)
    shape, steps, repeats = ((2, 4, 8, 8), 10, 3) if args.tiny else ((64, 32, 32, 32), 20, 15)
    repeats = args.repeats or repeats
    header(__doc__.splitlines()[0])
    g = torch.Generator().manual_seed(0)
    q0, p0 = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
    h = 0.05
    t = [0.0, steps * h]

    def ours(check, save="all"):
        solver = solvers.Solver("verlet", step_size=h, check_finite=check)
        return lambda: solvers.solve((f_q, f_p), (q0, p0), t, solver, save=save)

    q, p = ours(True)().ys
    q_ref, p_ref = plain_verlet(q0, p0, h, steps)
    # The same formulas; our steps are the grid's cells, h to the times' round-off.
    if not (torch.allclose(q[-1], q_ref, atol=1e-5) and torch.allclose(p[-1], p_ref, atol=1e-5)):
        raise AssertionError("solvers.solve's Verlet differs from the plain loop")
    del q, p, q_ref, p_ref
    times = interleaved(
        {
            "ours": ours(True),
            "ours, no check": ours(False),
            "ours, save='final'": ours(True, save="final"),
            "plain": lambda: plain_verlet(q0, p0, h, steps),
            "plain again": lambda: plain_verlet(q0, p0, h, steps),
        },
        repeats,
    )
    print(f"state 2 x {shape}, {steps} Verlet steps, {repeats} interleaved rounds")
    table(
        [
            {
                "candidate": name,
                "median s": median(times[name]),
                "min s": min(times[name]),
                "ratio to plain (median of rounds)": paired_ratio(times[name], times["plain"]),
            }
            for name in times
        ]
    )


if __name__ == "__main__":
    main()

"""dopri5 on a convolutional stage: torchdiffeq's loop against solve's stages-apart driver.

One parabolic stage (``ParabolicRHS``, 16 channels, 3 parameter sets over [0, 3], the
bias normalization, kernels scaled to h·ρ(KᵀK) = 1) on a batch of CIFAR-sized states
``(batch, 16, 32, 32)``, integrated over [0, 3] with dopri5 at two tolerances, jump times
of θ(t) given: once through ``solvers.odeint`` (torchdiffeq's drop-in: its own loop and
stage arithmetic, bit for bit) and once through ``solvers.solve`` (the same steps with the
stage derivatives kept as separate tensors, ``solvers/_adaptive.py``), in interleaved
rounds. Reported per tolerance: NFE of each, seconds (median), milliseconds per
evaluation, the ratio torchdiffeq / solve, and the largest difference of the two final
states relative to the state's largest entry.

    python benchmarks/adaptive_driver.py [--tiny] [--repeats N] [--threads N] [--batch B]
"""

from __future__ import annotations

import torch
from _common import header, interleaved, median, parser, setup, table

import neuralpde
import solvers


def measure(rhs, y0, t, rtol: float, jumps, repeats: int) -> dict[str, object]:
    """One row: dopri5 at ``rtol = atol`` through odeint and through solve."""
    opts = {"jump_t": jumps}
    solver = solvers.Solver("dopri5", rtol=rtol, atol=rtol, options=opts)
    nfe = [0]

    def counted(tt, y):
        nfe[0] += 1
        return rhs(tt, y)

    def theirs():
        with torch.no_grad():
            return solvers.odeint(rhs, y0, t, rtol=rtol, atol=rtol, options=opts)[-1]

    def ours():
        with torch.no_grad():
            return solvers.solve(rhs, y0, t, solver, save="final")

    ref, sol = theirs(), ours()
    with torch.no_grad():
        solvers.odeint(counted, y0, t, rtol=rtol, atol=rtol, options=opts)
    diff = ((sol.y_final - ref).abs().max() / ref.abs().max()).item()
    times = interleaved({"odeint": theirs, "solve": ours}, repeats)
    t_theirs, t_ours = median(times["odeint"]), median(times["solve"])
    return {
        "rtol = atol": f"{rtol:g}",
        "NFE odeint / solve": f"{nfe[0]} / {sol.stats.nfe}",
        "s odeint (torchdiffeq's loop)": t_theirs,
        "s solve (stages apart)": t_ours,
        "ms per NFE odeint / solve": f"{1e3 * t_theirs / nfe[0]:.3g} / "
        f"{1e3 * t_ours / sol.stats.nfe:.3g}",
        "speedup odeint / solve": t_theirs / t_ours,
        "rel. difference": diff,
    }


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=None, help="states per solve (default 500)")
    args = p.parse_args()
    setup(args)
    repeats = args.repeats or (2 if args.tiny else 5)
    batch = args.batch or (4 if args.tiny else 500)
    size = 8 if args.tiny else 32
    header(__doc__.splitlines()[0])
    torch.manual_seed(0)
    rhs = neuralpde.ParabolicRHS(16, steps=3, step_size=1.0, normalization="bias")
    with torch.no_grad():  # h·ρ = 1: half the forward-Euler limit, a trained stage's range
        w = rhs.theta.weight
        rho = neuralpde.stability.symbol_rho(w, size, size)
        w.mul_((1.0 / rho).sqrt().view(-1, 1, 1, 1, 1))
    y0 = torch.randn(batch, 16, size, size)
    t = torch.tensor([0.0, rhs.T])
    jumps = torch.tensor(rhs.jump_times(), dtype=torch.float64)
    rows = [measure(rhs, y0, t, rtol, jumps, repeats) for rtol in (1e-2, 1e-4)]
    print(
        f"one parabolic stage, 16 channels, states ({batch}, 16, {size}, {size}), "
        f"[0, {rhs.T:g}], {repeats} interleaved rounds"
    )
    table(rows)


if __name__ == "__main__":
    main()

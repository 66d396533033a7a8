"""Float32 reconstruction drift of memory="reversible" over long stages, and its remedy.

The reversible backward pass recomputes each step's input by running the stepper
backwards from the stage output. In exact arithmetic that returns the forward states; in
float32 the round-off of every inverse step accumulates, and is amplified wherever the
dynamics are sensitive. For a Hamiltonian and a second-order stage of 64, 256 and 1024
steps, at the paper's step h = 1 and at h = 0.1, this script prints (all measured here):

- recon: relative error of the stage input reconstructed by running the float32 stepper
  backwards from the float32 output, against the true input;
- ag32: relative error of the float32 autograd gradient against float64 autograd (how
  well float32 can do at all on this problem);
- rev32: relative difference of the float32 reversible gradient from float32 autograd;
- rev32/ck16: the same with ``checkpoint_every=16`` (a stored state every 16 steps).

Gradients are of a fixed linear read-out of the stage output, with respect to the input
and every parameter, concatenated.

    python benchmarks/reversible_drift.py [--tiny]
"""

from __future__ import annotations

import argparse
import datetime
import sys

import torch
from memory import machine

import neuralpde
import solvers

ARCHS = {
    "hamiltonian": (neuralpde.HamiltonianRHS, "symplectic_euler"),
    "second_order": (neuralpde.SecondOrderRHS, "leapfrog"),
}


def gradient(rhs, x, method, h, memory, checkpoint_every=None):
    x = x.detach().requires_grad_(True)
    # float64 times for every run: a float32 T such as 25.6 would round up and add a step.
    t = torch.tensor([0.0, rhs.T], dtype=torch.float64)
    options = {} if checkpoint_every is None else {"checkpoint_every": checkpoint_every}
    solver = solvers.Solver(method, step_size=h, memory=memory, options=options)
    q, p = solvers.solve(rhs.separable, rhs.to_state(x), t, solver).ys
    y = rhs.from_state((q[-1], p[-1]))
    w = torch.linspace(-1.0, 1.0, y.numel(), dtype=y.dtype).view_as(y)
    g = torch.autograd.grad((w * y).sum(), [x, *rhs.parameters()])
    return torch.cat([gi.flatten().double() for gi in g]), (q[-1].detach(), p[-1].detach())


def reconstruct(rhs, method, h, state):
    """Run the stepper backwards from ``state`` at T to 0 (the same cells, ``-h`` each)."""
    t = torch.tensor([rhs.T, 0.0], dtype=torch.float64)
    with torch.no_grad():
        q, p = solvers.odeint(rhs.separable, state, t, method=method, options={"step_size": h})
    return rhs.from_state((q[-1], p[-1]))


def rel(a, b) -> float:
    return float((a - b).norm() / b.norm())


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tiny", action="store_true", help="tiny sizes (CI: checks that it runs)")
    args = ap.parse_args(argv)
    width, size, batch = (4, 4, 2) if args.tiny else (8, 8, 4)
    depths = (8, 32) if args.tiny else (64, 256, 1024)
    print("# Float32 reconstruction drift of memory='reversible'")
    print(f"date:    {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC")
    print(f"machine: {machine()}")
    print(f"command: python benchmarks/reversible_drift.py {' '.join(argv or sys.argv[1:])}")
    print(f"stage:   width {width}, input ({batch}, {width}, {size}, {size}), seed 0")
    print()
    print("| arch | method | h | steps | max abs output | recon | ag32 | rev32 | rev32/ck16 |")
    print("|---|---|---|---|---|---|---|---|---|")
    for arch, (cls, method) in ARCHS.items():
        for h in (1.0, 0.1):
            for steps in depths:
                torch.manual_seed(0)
                rhs64 = cls(width, steps, h).double()
                x64 = torch.randn(batch, width, size, size, dtype=torch.float64)
                rhs32 = cls(width, steps, h)
                rhs32.load_state_dict({k: v.float() for k, v in rhs64.state_dict().items()})
                x32 = x64.float()
                g64, out64 = gradient(rhs64, x64, method, h, "autograd")
                g32, out32 = gradient(rhs32, x32, method, h, "autograd")
                grev, _ = gradient(rhs32, x32, method, h, "reversible")
                gck, _ = gradient(rhs32, x32, method, h, "reversible", 16)
                x_rec = reconstruct(rhs32, method, h, out32)
                big = float(rhs64.from_state(out64).abs().max())
                cells = [rel(x_rec.double(), x64), rel(g32, g64), rel(grev, g32), rel(gck, g32)]
                print(
                    f"| {arch} | {method} | {h:g} | {steps} | {big:.3g} | "
                    + " | ".join(f"{c:.1e}" for c in cells)
                    + " |",
                    flush=True,
                )
    print()


if __name__ == "__main__":
    main()

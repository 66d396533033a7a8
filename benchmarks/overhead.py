"""Framework overhead: a PDECNN training step against the same arithmetic written by hand.

For each architecture of the CIFAR-10 preset, one training step (forward, cross-entropy,
backward, SGD with momentum) of ``PDECNN.from_paper("cifar10", arch)`` is timed against
``Unrolled``: a plain module that holds copies of the same weights (one tensor per time
step, as a hand-written ResNet would) and applies the same update formulas in a Python
loop. Outputs and gradients are checked to agree before timing. Reported: median seconds
per step and the median of per-round ratios library / hand-written (target <= 1.05).

The hand-written layer is plain autograd (``symmetric_layer_reference``); the column
"ratio, same layer" swaps in the library's layer function so that it isolates the
framework (stages, solvers, θ(t) lookup) from the layer's own backward. "control" times
a second copy of the hand-written network against the first: the same arithmetic, so
its distance from 1 is this run's noise floor.

    python benchmarks/overhead.py [--tiny] [--repeats N] [--threads N] [--archs ...]
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from _common import header, interleaved, median, paired_ratio, parser, setup, table
from torch import nn

import neuralpde
from neuralpde import _layers

ARCHS = ("parabolic", "hamiltonian", "second_order", "resnet")


class Unrolled(nn.Module):
    """The PDECNN's arithmetic unrolled by hand, with its weights copied per time step."""

    def __init__(self, net: neuralpde.PDECNN, layer):
        super().__init__()
        self.arch = net.arch
        self.layer = layer
        self.opening = copy.deepcopy(net.opening)
        self.connectors = copy.deepcopy(net.connectors)
        self.classifier = copy.deepcopy(net.classifier)
        self.blocks = nn.ModuleList()
        self.h = []
        for stage in net.stages:
            rhs = stage.rhs
            self.h.append(stage.step_size)
            block = nn.ModuleList()
            for j in range(rhs.steps):
                step = nn.ParameterDict()
                for w in rhs.thetas():
                    for name in w.names:
                        prefix = {"theta_q": "q_", "theta_p": "p_"}.get(_attr_of(rhs, w), "")
                        step[prefix + name] = nn.Parameter(getattr(w, name)[j].detach().clone())
                block.append(step)
            self.blocks.append(block)

    def block(self, k: int, y: torch.Tensor) -> torch.Tensor:
        h, eps, sym = self.h[k], _layers.TV_EPS, self.layer
        for w in self.blocks[k]:
            if self.arch == "parabolic":
                y = y + h * sym(y, w["weight"], w["scale"], w["shift"], eps)
            elif self.arch == "resnet":
                z = torch.relu(
                    _layers.tv_norm(F.conv2d(y, w["weight1"], padding=1), w["scale"], w["shift"])
                )
                y = y + h * F.conv2d(z, w["weight2"], padding=1)
            elif self.arch == "hamiltonian":
                q, p = y
                q = q + h * sym(p, w["q_weight"], w["q_scale"], w["q_shift"], eps)
                p = p + h * -sym(q, w["p_weight"], w["p_scale"], w["p_shift"], eps)
                y = (q, p)
            else:  # second order: p is the velocity, starting at zero
                q, p = y
                p = p + h * sym(q, w["weight"], w["scale"], w["shift"], eps)
                q = q + h * p
                y = (q, p)
        return y

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.opening(x)
        last = len(self.blocks) - 1
        for k, connector in enumerate(self.connectors):
            if self.arch == "hamiltonian":
                x = torch.cat(self.block(k, x.chunk(2, dim=1)), dim=1)
            elif self.arch == "second_order":
                x = self.block(k, (x, torch.zeros_like(x)))[0]
            else:
                x = self.block(k, x)
            x = connector(x)
            x = x.mean(dim=(2, 3)) if k == last else F.avg_pool2d(x, 2)
        return self.classifier(x)


def _attr_of(rhs: nn.Module, w: nn.Module) -> str:
    return next(name for name, m in rhs.named_children() if m is w)


def make_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor):
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss

    return step


def check_same(net: nn.Module, ref: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Largest relative difference of logits and of the loss gradient norms (train mode)."""
    a, b = copy.deepcopy(net), copy.deepcopy(ref)
    la, lb = a(x), b(x)
    F.cross_entropy(la, y).backward()
    F.cross_entropy(lb, y).backward()
    ga = torch.cat([p.grad.reshape(-1) for p in a.parameters()]).norm()
    gb = torch.cat([p.grad.reshape(-1) for p in b.parameters()]).norm()
    d_out = ((la - lb).abs().max() / lb.abs().max()).item()
    d_grad = ((ga - gb).abs() / gb).item()
    return max(d_out, d_grad)


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--archs", nargs="*", default=list(ARCHS))
    args = p.parse_args()
    setup(args)
    torch.manual_seed(0)
    if args.tiny:
        kw = {"in_channels": 3, "num_classes": 10, "widths": (8, 8, 8)}
        batch, size, repeats = 2, 8, args.repeats or 2
    else:
        batch, size, repeats = 32, 32, args.repeats or 7
    header(__doc__.splitlines()[0])
    x = torch.randn(batch, 3, size, size)
    y = torch.randint(0, 10, (batch,))
    rows = []
    for arch in args.archs:
        torch.manual_seed(0)
        if args.tiny:
            net = neuralpde.PDECNN(arch, **kw)
        else:
            net = neuralpde.PDECNN.from_paper("cifar10", arch)
        plain = Unrolled(net, _layers.symmetric_layer_reference)
        same = Unrolled(net, _layers.symmetric_layer)
        diff = max(check_same(net, plain, x, y), check_same(net, same, x, y))
        # float32 round-off, amplified by 3 stages and BatchNorm (the resnet control is
        # unconstrained): ~1e-4 relative; a wrong formula gives O(1).
        if diff > 1e-3:
            raise AssertionError(f"{arch}: hand-written network differs from PDECNN by {diff}")
        t = interleaved(
            {
                "lib": make_step(net, x, y),
                "plain": make_step(plain, x, y),
                "same": make_step(same, x, y),
                "control": make_step(copy.deepcopy(plain), x, y),
            },
            repeats,
        )
        rows.append(
            {
                "arch": arch,
                "PDECNN s/step": median(t["lib"]),
                "by hand s/step": median(t["plain"]),
                "ratio": paired_ratio(t["lib"], t["plain"]),
                "ratio, same layer": paired_ratio(t["lib"], t["same"]),
                "ratio of minima": min(t["lib"]) / min(t["plain"]),
                "control": paired_ratio(t["control"], t["plain"]),
                "max rel diff": diff,
            }
        )
    print(f"batch {batch}, {size}x{size} images, median of {repeats} interleaved rounds")
    table(rows)


if __name__ == "__main__":
    main()

"""torch.compile: speedup of a compiled PDECNN over eager, forward and training step.

The whole network is compiled with ``fullgraph=True`` (no graph break is allowed) and the
default inductor backend; compiled outputs are checked against eager before timing. Reported:
compile time, and median seconds of a forward (eval mode, no grad) and of a training step
(forward + backward + SGD), compiled and eager, with the median of per-round speedups.

    python benchmarks/compile.py [--tiny] [--repeats N] [--threads N] [--archs ...]
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from _common import header, interleaved, median, paired_ratio, parser, setup, table

import neuralpde

ARCHS = ("parabolic", "hamiltonian", "second_order")


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--archs", nargs="*", default=None)
    p.add_argument(
        "--backend",
        default=None,
        help="torch.compile backend (default inductor; aot_eager with --tiny, where "
        "inductor's code generation alone takes a minute on two cores)",
    )
    args = p.parse_args()
    backend = args.backend or ("aot_eager" if args.tiny else "inductor")
    setup(args)
    archs = args.archs or (["parabolic"] if args.tiny else list(ARCHS))
    batch, size, repeats = (2, 8, 2) if args.tiny else (32, 32, 5)
    repeats = args.repeats or repeats
    header(__doc__.splitlines()[0])
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, size, size, generator=g)
    y = torch.randint(0, 10, (batch,), generator=g)
    rows = []
    for arch in archs:
        torch.manual_seed(0)
        torch._dynamo.reset()
        if args.tiny:
            net = neuralpde.PDECNN(arch, 3, 10, widths=(4, 4))
        else:
            net = neuralpde.PDECNN.from_paper("cifar10", arch)
        compiled = torch.compile(net, fullgraph=True, backend=backend)
        net.eval()
        t0 = time.perf_counter()
        with torch.no_grad():
            out_c = compiled(x)
            out_e = net(x)
        compile_fwd = time.perf_counter() - t0
        err = ((out_c - out_e).abs().max() / out_e.abs().max()).item()
        if err > 1e-3:
            raise AssertionError(f"{arch}: compiled output differs from eager by {err}")

        def forward(m):
            def run():
                with torch.no_grad():
                    return m(x)

            return run

        t_fwd = interleaved({"compiled": forward(compiled), "eager": forward(net)}, repeats)
        net.train()
        opt = torch.optim.SGD(net.parameters(), lr=1e-4, momentum=0.9)

        def train(m, opt=opt):
            def run():
                opt.zero_grad(set_to_none=True)
                F.cross_entropy(m(x), y).backward()
                opt.step()

            return run

        t0 = time.perf_counter()
        train(compiled)()
        compile_train = time.perf_counter() - t0
        t_train = interleaved({"compiled": train(compiled), "eager": train(net)}, repeats)
        rows.append(
            {
                "arch": arch,
                "compile s (fwd, train)": f"{compile_fwd:.0f}, {compile_train:.0f}",
                "fwd s eager": median(t_fwd["eager"]),
                "fwd s compiled": median(t_fwd["compiled"]),
                "fwd speedup": paired_ratio(t_fwd["eager"], t_fwd["compiled"]),
                "train s eager": median(t_train["eager"]),
                "train s compiled": median(t_train["compiled"]),
                "train speedup": paired_ratio(t_train["eager"], t_train["compiled"]),
                "max rel diff": err,
            }
        )
    print(
        f"batch {batch}, {size}x{size} images, paper schemes, backend {backend}, "
        f"{repeats} interleaved rounds"
    )
    table(rows)


if __name__ == "__main__":
    main()

"""The layer F_sym: hand-written backward against plain autograd, saved bytes and time.

``symmetric_layer`` (a custom autograd function that saves the input and the normalized
pre-activation) against ``symmetric_layer_reference`` (plain autograd) on one stage-sized
input of the CIFAR-10 preset. Saved bytes are counted with
``torch.autograd.graph.saved_tensors_hooks`` (distinct tensors, in units of one
activation); time is forward + backward, median of interleaved rounds.

    python benchmarks/layer.py [--tiny] [--repeats N] [--threads N]
"""

from __future__ import annotations

import torch
from _common import header, interleaved, median, paired_ratio, parser, setup, table

from neuralpde._layers import init_kernel, symmetric_layer, symmetric_layer_reference


def saved_activations(fn, *args) -> float:
    seen = {}

    def pack(t):
        seen[(t.data_ptr(), t.dtype, tuple(t.shape))] = t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(*args)
    y = args[0]
    return sum(seen.values()) / (y.numel() * y.element_size())


def main() -> None:
    args = parser(__doc__.splitlines()[0]).parse_args()
    setup(args)
    batch, c, size, repeats = (2, 8, 8, 3) if args.tiny else (32, 32, 32, 15)
    repeats = args.repeats or repeats
    header(__doc__.splitlines()[0])
    torch.manual_seed(0)
    y = torch.randn(batch, c, size, size, requires_grad=True)
    w = init_kernel(c, c, 3, 3).requires_grad_()
    s = torch.ones(c, requires_grad=True)
    b = torch.zeros(c, requires_grad=True)
    g = torch.randn(batch, c, size, size)
    rows = []
    for norm in (True, False):
        s_, b_ = (s, b) if norm else (None, None)
        inputs = [t for t in (y, w, s_, b_) if t is not None]

        def run(fn, s_=s_, b_=b_, inputs=inputs):
            return lambda: torch.autograd.grad(fn(y, w, s_, b_), inputs, g)

        ours, ref = run(symmetric_layer)(), run(symmetric_layer_reference)()
        err = max(((a - e).abs().max() / e.abs().max()).item() for a, e in zip(ours, ref))
        t = interleaved(
            {"ours": run(symmetric_layer), "autograd": run(symmetric_layer_reference)}, repeats
        )
        rows.append(
            {
                "normalization": "yes" if norm else "no",
                "saved, ours": saved_activations(symmetric_layer, y, w, s_, b_),
                "saved, autograd": saved_activations(symmetric_layer_reference, y, w, s_, b_),
                "fwd+bwd s, ours": median(t["ours"]),
                "fwd+bwd s, autograd": median(t["autograd"]),
                "time ratio ours/autograd": paired_ratio(t["ours"], t["autograd"]),
                "grad rel diff": err,
            }
        )
    print(f"input ({batch}, {c}, {size}, {size}); saved in activations of that size")
    table(rows)


if __name__ == "__main__":
    main()

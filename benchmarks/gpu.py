"""The GPU path: images/s of the CIFAR-10 preset and a sync-free fixed-step training step.

Images/s in fp32, channels_last and channels_last + bf16 autocast, and a fixed-step
forward + backward under ``torch.cuda.set_sync_debug_mode("error")``.

Prints "skipped: no CUDA" without a GPU. The sync check runs each architecture with its
paper scheme and with rk4, stages' ``check_finite`` off (the finite check is the one
deliberate sync per stage): any host–device synchronization inside the stages raises.

    python benchmarks/gpu.py [--tiny] [--repeats N]
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from _common import header, interleaved, median, parser, table

import neuralpde

ARCHS = ("parabolic", "hamiltonian", "second_order", "resnet")


def make_net(arch: str, tiny: bool) -> neuralpde.PDECNN:
    torch.manual_seed(0)
    if tiny:
        return neuralpde.PDECNN(arch, 3, 10, widths=(8, 8))
    return neuralpde.PDECNN.from_paper("cifar10", arch)


def sync_free(arch: str, method: str | None, x, y, tiny: bool) -> str:
    net = make_net(arch, tiny).cuda()
    net.set_solver(method)
    for stage in net.stages:
        stage.check_finite = False
    net(x)  # warm-up outside the check: cuDNN autotuning may sync
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        F.cross_entropy(net(x), y).backward()
        verdict = "no sync"
    except RuntimeError as err:
        verdict = f"SYNC: {str(err).splitlines()[0][:60]}"
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return verdict


def throughput(arch: str, x, y, repeats: int, tiny: bool) -> dict[str, float]:
    out = {}
    variants = {
        "fp32": (torch.contiguous_format, False),
        "channels_last": (torch.channels_last, False),
        "channels_last + bf16": (torch.channels_last, True),
    }
    steps = {}
    for name, (fmt, bf16) in variants.items():
        net = make_net(arch, tiny).cuda().to(memory_format=fmt)
        for stage in net.stages:
            stage.check_finite = False
        opt = torch.optim.SGD(net.parameters(), lr=1e-4, momentum=0.9)
        xb = x.contiguous(memory_format=fmt)

        def step(net=net, opt=opt, xb=xb, bf16=bf16):
            opt.zero_grad(set_to_none=True)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
                loss = F.cross_entropy(net(xb), y)
            loss.backward()
            opt.step()

        steps[name] = step
    times = interleaved(steps, repeats, warmup=3, device="cuda")
    for name in variants:
        out[name] = x.shape[0] / median(times[name])
    return out


def main() -> None:
    args = parser(__doc__.splitlines()[0]).parse_args()
    header(__doc__.splitlines()[0])
    if not torch.cuda.is_available():
        print("skipped: no CUDA")
        return
    torch.backends.cudnn.benchmark = True
    batch, size, repeats = (4, 8, 3) if args.tiny else (128, 32, args.repeats or 20)
    x = torch.randn(batch, 3, size, size, device="cuda")
    y = torch.randint(0, 10, (batch,), device="cuda")
    rows = []
    for arch in ARCHS:
        ips = throughput(arch, x, y, repeats, args.tiny)
        rows.append(
            {
                "arch": arch,
                **{f"img/s {k}": v for k, v in ips.items()},
                "bf16+cl / fp32": ips["channels_last + bf16"] / ips["fp32"],
                "sync check (paper scheme)": sync_free(arch, None, x, y, args.tiny),
                "sync check (rk4)": sync_free(arch, "rk4", x, y, args.tiny),
            }
        )
    print(f"training step, batch {batch}, {size}x{size}, median of {repeats} rounds")
    table(rows)


if __name__ == "__main__":
    main()

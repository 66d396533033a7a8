"""Memory and time of a training step: reversible backpropagation against plain autograd.

For a Hamiltonian stage and a second-order stage of depth 4, 16, 64 and 256 steps, one
training step (forward, loss, backward, SGD update) runs with ``memory="autograd"`` and
with ``memory="reversible"``. Reported, all measured in this one run:

- bytes saved for backward: every tensor the autograd graph keeps, counted through
  ``torch.autograd.graph.saved_tensors_hooks`` as the distinct storages it holds
  (parameters excluded: they exist without any graph); deterministic, works on the CPU;
- on a GPU also the peak of ``torch.cuda.max_memory_allocated`` above the memory held
  before the step;
- the median time of a training step, wall clock and CPU time of this process, the two
  modes run alternately so that the slow phases of a shared machine hit both, and the
  median of the per-round ratios (CPU time is the steadier one on a loaded machine).

Targets (issue "Deep hyperbolic networks in constant memory"): at 64 steps the reversible
mode saves at most 1/10 of autograd's bytes and its bytes do not grow with depth; a
training step costs at most 1.6x autograd's time.

    python benchmarks/memory.py [--tiny] [--repeats N] [--depths 4 16 64 256] [--threads N]
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import time
import weakref

import torch
from _common import machine, setup

import neuralpde

ARCHS = {"hamiltonian": neuralpde.HamiltonianRHS, "second_order": neuralpde.SecondOrderRHS}
MODES = ("autograd", "reversible")


class _Saved:
    """What the graph holds in place of a saved tensor; it dies with its graph node."""

    __slots__ = ("tensor", "__weakref__")

    def __init__(self, tensor: torch.Tensor):
        self.tensor = tensor


def saved_bytes(fn, exclude: set[int]) -> tuple[int, object]:
    """Bytes that the graph built by ``fn()`` keeps for backward, and ``fn()``'s result.

    Counts the distinct storages of the tensors saved through
    ``torch.autograd.graph.saved_tensors_hooks`` that are still held when ``fn`` returns
    (saves of graph branches that die at once, like a finiteness check, are not memory
    the backward pass needs); storages in ``exclude`` (the parameters) are left out.
    """
    held: weakref.WeakSet[_Saved] = weakref.WeakSet()

    def pack(t: torch.Tensor) -> _Saved:
        s = _Saved(t)
        held.add(s)
        return s

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda s: s.tensor):
        out = fn()
    storages = {}
    for s in list(held):
        st = s.tensor.untyped_storage()
        if st.data_ptr() not in exclude:
            storages[st.data_ptr()] = st.nbytes()
    return sum(storages.values()), out


class Case:
    """One stage, its input and an optimizer; ``step()`` is one training step."""

    def __init__(self, arch: str, depth: int, args, device: str):
        torch.manual_seed(0)
        rhs = ARCHS[arch](args.channels, depth, args.step_size)
        self.stage = neuralpde.Stage(rhs).to(device)
        self.x = torch.randn(args.batch, args.channels, args.size, args.size, device=device)
        self.target = torch.randn_like(self.x)
        self.opt = torch.optim.SGD(self.stage.parameters(), lr=1e-3)
        self.params = {p.untyped_storage().data_ptr() for p in self.stage.parameters()}
        self.device = device

    def set_mode(self, memory: str) -> None:
        self.stage.set_solver(memory=memory)

    def loss(self) -> torch.Tensor:
        return (self.stage(self.x) - self.target).pow(2).mean()

    def step(self) -> None:
        self.opt.zero_grad(set_to_none=True)
        self.loss().backward()
        self.opt.step()

    def bytes_saved(self) -> int:
        n, loss = saved_bytes(self.loss, self.params)
        del loss
        return n

    def cuda_peak(self) -> int | None:
        if self.device != "cuda":
            return None
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        self.step()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base


def timed(case: Case, repeats: int) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Wall and CPU seconds per training step of each mode, alternating modes."""
    for m in MODES:
        case.set_mode(m)
        case.step()
    wall: dict[str, list[float]] = {m: [] for m in MODES}
    cpu: dict[str, list[float]] = {m: [] for m in MODES}
    for _ in range(repeats):
        for m in MODES:
            case.set_mode(m)
            if case.device == "cuda":
                torch.cuda.synchronize()
            t0, c0 = time.perf_counter(), time.process_time()
            case.step()
            if case.device == "cuda":
                torch.cuda.synchronize()
            wall[m].append(time.perf_counter() - t0)
            cpu[m].append(time.process_time() - c0)
    return wall, cpu


def ratio(times: dict[str, list[float]]) -> float:
    return statistics.median(r / a for r, a in zip(times["reversible"], times["autograd"]))


def mib(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**20:.3g}"


def main(argv: list[str] | None = None) -> list[dict[str, object]]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tiny", action="store_true", help="tiny sizes, seconds (CI: checks it runs)")
    p.add_argument("--repeats", type=int, default=None, help="timed steps per mode and depth")
    p.add_argument("--depths", type=int, nargs="+", default=None)
    p.add_argument("--arch", choices=sorted(ARCHS), nargs="+", default=sorted(ARCHS))
    p.add_argument("--channels", type=int, default=None, help="stage width (even)")
    p.add_argument("--size", type=int, default=None, help="image height = width")
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--step-size", type=float, default=0.1)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--system-malloc", action="store_true", help="leave glibc's allocator unpinned")
    args = p.parse_args(argv)
    setup(args)
    tiny = {"channels": 4, "size": 6, "batch": 2, "repeats": 1, "depths": [4, 16]}
    full = {"channels": 16, "size": 16, "batch": 8, "repeats": 5, "depths": [4, 16, 64, 256]}
    for k, v in (tiny if args.tiny else full).items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    device = "cuda" if torch.cuda.is_available() else "cpu"

    print("# Reversible backpropagation: memory and time of a training step")
    print(f"date:    {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC")
    print(f"machine: {machine()}")
    print(f"command: python {' '.join(['benchmarks/memory.py', *(argv or sys.argv[1:])])}")
    print(
        f"stage:   width {args.channels}, input ({args.batch}, {args.channels}, {args.size}, "
        f"{args.size}) float32, h = {args.step_size}, loss = MSE, SGD; {args.repeats} timed "
        "steps per mode"
    )
    state = args.batch * args.channels * args.size**2 * 4
    print(f"one activation (the stage's state) = {mib(state)} MiB")
    print()
    cols = ["arch", "steps", "autograd MiB", "reversible MiB", "bytes ratio", "autograd/step"]
    cols += ["autograd s", "reversible s", "time ratio", "CPU-time ratio"]
    if device == "cuda":
        cols += ["autograd CUDA peak MiB", "reversible CUDA peak MiB"]
    print("| " + " | ".join(cols) + " |")
    print("|" + "|".join("---" for _ in cols) + "|")
    rows = []
    for arch in args.arch:
        for depth in args.depths:
            case = Case(arch, depth, args, device)
            nbytes, peaks = {}, {}
            for m in MODES:
                case.set_mode(m)
                nbytes[m] = case.bytes_saved()
                peaks[m] = case.cuda_peak()
            wall, cpu = timed(case, args.repeats)
            row = {
                "arch": arch,
                "steps": depth,
                "autograd_bytes": nbytes["autograd"],
                "reversible_bytes": nbytes["reversible"],
                "bytes_ratio": nbytes["reversible"] / nbytes["autograd"],
                "autograd_s": statistics.median(wall["autograd"]),
                "reversible_s": statistics.median(wall["reversible"]),
                "time_ratio": ratio(wall),
                "cpu_time_ratio": ratio(cpu),
            }
            rows.append(row)
            cells = [
                arch,
                str(depth),
                mib(row["autograd_bytes"]),
                mib(row["reversible_bytes"]),
                f"{row['bytes_ratio']:.4f}",
                f"{row['autograd_bytes'] / state / depth:.1f}",
                f"{row['autograd_s']:.4f}",
                f"{row['reversible_s']:.4f}",
                f"{row['time_ratio']:.2f}",
                f"{row['cpu_time_ratio']:.2f}",
            ]
            if device == "cuda":
                cells += [mib(peaks["autograd"]), mib(peaks["reversible"])]
            print("| " + " | ".join(cells) + " |", flush=True)
    print()
    print(
        "bytes ratio = reversible / autograd bytes saved for backward; autograd/step = "
        "autograd's saved bytes per step in activations; time ratio, CPU-time ratio = "
        "median over rounds of reversible / autograd wall-clock, CPU seconds per training "
        "step."
    )
    return rows


if __name__ == "__main__":
    main()

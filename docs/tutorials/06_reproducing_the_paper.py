"""Tutorial 06: reproducing the paper — presets, parameter counts, expected accuracy, cost.

Runs without any data set: it checks the parameter counts of every preset against the
paper's Table 1, runs each network on random input, and measures training throughput on
this machine to estimate how long the paper's recipe takes.

    python docs/tutorials/06_reproducing_the_paper.py

``NEURALPDE_SMALL=1`` shrinks the throughput measurement to a few images (seconds);
figures go to ``$NEURALPDE_FIGURES`` (default: ``docs/tutorials/figures``).
"""

import os
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

import neuralpde  # noqa: E402

SMALL = os.environ.get("NEURALPDE_SMALL") == "1"
FIGURES = Path(os.environ.get("NEURALPDE_FIGURES", Path(__file__).parent / "figures"))
FIGURES.mkdir(parents=True, exist_ok=True)
torch.manual_seed(0)

DATASETS = ("stl10", "cifar10", "cifar100")
ARCHS = ("parabolic", "hamiltonian", "second_order")
IMAGE_SIZE = {"stl10": 96, "cifar10": 32, "cifar100": 32}

# Table 1 of Ruthotto & Haber (2020): parameters, test accuracy (%), test cross-entropy.
TABLE1_PARAMETERS = {
    "parabolic": {"stl10": 618_554, "cifar10": 502_570, "cifar100": 652_484},
    "hamiltonian": {"stl10": 324_794, "cifar10": 264_106, "cifar100": 362_180},
    "second_order": {"stl10": 618_554, "cifar10": 502_570, "cifar100": 652_484},
}
TABLE1_ACCURACY = {
    "parabolic": {"stl10": (77.0, 0.711), "cifar10": (88.5, 0.333), "cifar100": (64.8, 1.234)},
    "hamiltonian": {"stl10": (78.3, 0.789), "cifar10": (89.3, 0.349), "cifar100": (64.9, 1.237)},
    "second_order": {"stl10": (74.3, 0.810), "cifar10": (89.2, 0.333), "cifar100": (65.4, 1.232)},
}
# The paper's recipe: training-set size and epochs (CIFAR-100 trains for 200 epochs).
TRAIN_IMAGES = {"stl10": 4_000, "cifar10": 40_000, "cifar100": 40_000}
VALIDATION_IMAGES = {"stl10": 1_000, "cifar10": 10_000, "cifar100": 10_000}
EPOCHS = {"stl10": 100, "cifar10": 100, "cifar100": 200}

# %% 1. Parameter counts, computed live, against Table 1.
print("parameters        " + "".join(f"{d:>22}" for d in DATASETS))
counts = {}
for arch in ARCHS:
    row = []
    for dataset in DATASETS:
        net = neuralpde.PDECNN.from_paper(dataset, arch)
        counts[arch, dataset] = neuralpde.count_parameters(net)
        paper = TABLE1_PARAMETERS[arch][dataset]
        mark = "=" if counts[arch, dataset] == paper else "!"
        row.append(f"{counts[arch, dataset]:>10,} {mark} {paper:>9,}")
        assert counts[arch, dataset] == paper, (arch, dataset, counts[arch, dataset], paper)
    print(f"{arch:<18}" + "".join(f"{c:>22}" for c in row))

# %% 2. A forward pass of every preset on random images, with the default (paper) solvers.
for dataset in DATASETS:
    for arch in ARCHS:
        net = neuralpde.PDECNN.from_paper(dataset, arch).eval()
        # Any size divisible by 2**(stages - 1) works; the small run uses 16x16 images.
        size = 16 if SMALL else IMAGE_SIZE[dataset]
        x = torch.randn(2, 3, size, size)  # (batch, channels, height, width)
        with torch.no_grad():
            logits = net(x)  # (batch, num_classes)
        assert logits.shape == (2, net.num_classes) and torch.isfinite(logits).all()
        nfe = sum(s["nfe"] for s in net.solver_stats())
        methods = sorted({s["method"] for s in net.solver_stats()})
        print(f"{dataset:<9} {arch:<13} logits {tuple(logits.shape)}  {methods}  NFE {nfe}")


# %% 3. Work per image and measured training throughput on this machine.
def train_flops_per_image(net: torch.nn.Module, size: int) -> float:
    """Floating-point operations of one training step (forward + backward), per image."""
    x = torch.randn(1, 3, size, size)
    with FlopCounterMode(display=False) as counter:
        net(x).sum().backward()
    net.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def train_throughput(net: torch.nn.Module, size: int, batch: int, steps: int) -> float:
    """Training images per second: SGD steps on random data after one warm-up step."""
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    x = torch.randn(batch, 3, size, size)
    y = torch.randint(0, net.num_classes, (batch,))
    net.train()
    elapsed = 0.0
    for i in range(steps + 1):
        start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(net(x), y).backward()
        opt.step()
        if i > 0:
            elapsed += time.perf_counter() - start
    return batch * steps / elapsed


# Every convolution keeps the image size (3x3 with padding 1, or 1x1), so the work per image
# is proportional to its pixels: the small run measures at a quarter of the side length
# (1/16 of the pixels) and scales up.
shrink = 4 if SMALL else 1
batch, steps = (2, 1) if SMALL else (32, 3)
flops = {}
for dataset in DATASETS:
    for arch in ARCHS:
        net = neuralpde.PDECNN.from_paper(dataset, arch)
        side = IMAGE_SIZE[dataset] // shrink
        flops[dataset, arch] = train_flops_per_image(net, side) * shrink**2
throughput = {}
for arch in ARCHS:
    net = neuralpde.PDECNN.from_paper("cifar10", arch)
    throughput[arch] = train_throughput(net, 32 // shrink, batch, steps) / shrink**2
    rate = throughput[arch] * flops["cifar10", arch] / 1e9
    print(
        f"cifar10 {arch:<13} {flops['cifar10', arch] / 1e9:.2f} GFLOP per training image; "
        f"{throughput[arch]:.1f} training images/s = {rate:.0f} GFLOP/s on this CPU "
        f"({torch.get_num_threads()} thread(s), batch {batch})"
    )


# %% 4. How long the paper's recipe takes: measured here, estimated on a GPU.
def recipe_flops(dataset: str, arch: str) -> float:
    """FLOPs of the whole recipe: every epoch trains on the training split and evaluates
    the validation split (a forward pass, about a third of a training step)."""
    per_epoch = TRAIN_IMAGES[dataset] + VALIDATION_IMAGES[dataset] / 3
    return EPOCHS[dataset] * per_epoch * flops[dataset, arch]


# An assumption, not a measurement: these narrow networks (16-256 channels, a memory-bound
# normalization after every convolution) sustain only a small fraction of a data-centre
# GPU's TF32 peak; we take 5-20 TFLOP/s for the whole training step.
GPU_SUSTAINED = (5e12, 20e12)
cpu_rate = {arch: throughput[arch] * flops["cifar10", arch] for arch in ARCHS}  # FLOP/s
estimates = {}
print(f"{'':<24}{'recipe':>10}{'this CPU':>12}{'GPU (estimate)':>18}")
for dataset in DATASETS:
    for arch in ARCHS:
        total = recipe_flops(dataset, arch)
        cpu_h = total / cpu_rate[arch] / 3600
        gpu_min = (total / GPU_SUSTAINED[1] / 60, total / GPU_SUSTAINED[0] / 60)
        estimates[dataset, arch] = (total, cpu_h, gpu_min)
        print(
            f"{dataset:<9} {arch:<13} {total / 1e15:>7.1f} PF {cpu_h:>9,.0f} h "
            f"{gpu_min[0]:>8.0f}-{gpu_min[1]:.0f} min"
        )

# %% 5. Figures.
fig, ax = plt.subplots(figsize=(7, 3.2))
width = 0.27
for i, arch in enumerate(ARCHS):
    xs = [k + (i - 1) * width for k in range(len(DATASETS))]
    ours = [counts[arch, d] / 1e3 for d in DATASETS]
    ax.bar(xs, ours, width, label=arch.replace("_", "-"))
    ax.scatter(
        xs,
        [TABLE1_PARAMETERS[arch][d] / 1e3 for d in DATASETS],
        color="k",
        marker="_",
        s=200,
        zorder=3,
    )
ax.set_xticks(range(len(DATASETS)), ["STL-10", "CIFAR-10", "CIFAR-100"])
ax.set_ylabel("parameters (thousands)")
ax.set_title("PDECNN.from_paper: bars, Table 1: black marks")
ax.legend(frameon=False, fontsize=8)
fig.tight_layout()
fig.savefig(FIGURES / "06_parameters.png", dpi=120)
plt.close(fig)

fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(8, 3.2))
labels = [a.replace("_", "-") for a in ARCHS]
ax1.bar(labels, [flops["cifar10", a] / 1e9 for a in ARCHS], color="tab:gray")
ax1.set_ylabel("GFLOP per training image")
ax1.set_title("CIFAR-10 preset: work")
ax2.bar(labels, [throughput[a] for a in ARCHS], color="tab:blue")
ax2.set_ylabel("training images / s")
ax2.set_title(f"this CPU, {torch.get_num_threads()} thread(s), batch {batch}")
fig.tight_layout()
fig.savefig(FIGURES / "06_cost.png", dpi=120)
plt.close(fig)
print(f"figures written to {FIGURES}")

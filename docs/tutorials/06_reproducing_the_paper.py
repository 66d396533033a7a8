"""Tutorial 06: reproducing the paper — the presets against Table 1, then Table 1 and the
paper's figures trained on real CIFAR-10 images.

    python docs/tutorials/06_reproducing_the_paper.py

At full size it trains Table 1's four networks with the ``cpu`` budget on the CIFAR-10
JPEGs in ``../shared/data/cifar10-jpeg`` (or ``$NEURALPDE_CIFAR10_JPEG``), continuing a
half-done table in ``runs/tutorial06/table1``, then Fig. 2 in ``runs/tutorial06/data_size``:
about 45 and 40 minutes on an idle 2-core CPU (measured: tutorial 06's page).
``NEURALPDE_SMALL=1`` runs the same commands at tiny size on
synthetic image folders written to a temporary directory (a minute; no data set needed).
Figures go to ``$NEURALPDE_FIGURES`` (default: ``docs/tutorials/figures``).
"""

import json
import os
import shutil
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

import neuralpde  # noqa: E402
from experiments import data_size, table1  # noqa: E402

SMALL = os.environ.get("NEURALPDE_SMALL") == "1"
FIGURES = Path(os.environ.get("NEURALPDE_FIGURES", Path(__file__).parent / "figures"))
FIGURES.mkdir(parents=True, exist_ok=True)
ROOT = Path(__file__).resolve().parents[2]
REAL = Path(os.environ.get("NEURALPDE_CIFAR10_JPEG", ROOT.parent / "shared/data/cifar10-jpeg"))
torch.manual_seed(0)

DATASETS = ("stl10", "cifar10", "cifar100")
ARCHS = ("parabolic", "hamiltonian", "second_order")
# Table 1 of Ruthotto & Haber (2020): parameters of each network.
TABLE1_PARAMETERS = {
    "parabolic": {"stl10": 618_554, "cifar10": 502_570, "cifar100": 652_484},
    "hamiltonian": {"stl10": 324_794, "cifar10": 264_106, "cifar100": 362_180},
    "second_order": {"stl10": 618_554, "cifar10": 502_570, "cifar100": 652_484},
}

# %% 1. The presets: parameter counts against Table 1, and the authors' BatchNorm ε.
print("parameters        " + "".join(f"{d:>22}" for d in DATASETS))
counts = {}
for arch in ARCHS:
    row = []
    for dataset in DATASETS:
        net = neuralpde.PDECNN.from_paper(dataset, arch)
        counts[arch, dataset] = neuralpde.count_parameters(net)
        paper = TABLE1_PARAMETERS[arch][dataset]
        row.append(f"{counts[arch, dataset]:>10,} {'=' if counts[arch, dataset] == paper else '!'}"
                   f" {paper:>9,}")  # fmt: skip
        assert counts[arch, dataset] == paper, (arch, dataset, counts[arch, dataset], paper)
        eps = {m.eps for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)}
        assert eps == {1e-4}, eps  # Meganet's and DynamicBlocks' ε, not PyTorch's 1e-5
    print(f"{arch:<18}" + "".join(f"{c:>22}" for c in row))

fig, ax = plt.subplots(figsize=(7, 3.2))
for i, arch in enumerate(ARCHS):
    xs = [k + (i - 1) * 0.27 for k in range(len(DATASETS))]
    ax.bar(xs, [counts[arch, d] / 1e3 for d in DATASETS], 0.27, label=arch.replace("_", "-"))
    paper = [TABLE1_PARAMETERS[arch][d] / 1e3 for d in DATASETS]
    ax.scatter(xs, paper, color="k", marker="_", s=200, zorder=3)
ax.set_xticks(range(len(DATASETS)), ["STL-10", "CIFAR-10", "CIFAR-100"])
ax.set_ylabel("parameters (thousands)")
ax.set_title("PDECNN.from_paper: bars, Table 1: black marks")
ax.legend(frameon=False, fontsize=8)
fig.tight_layout()
fig.savefig(FIGURES / "06_parameters.png", dpi=120)
plt.close(fig)


# %% 2. The images: the real CIFAR-10 JPEGs, or a synthetic stand-in for the small run.
def synthetic_cifar(root: Path, per_class: int, test_per_class: int) -> Path:
    """train/<class>/ and test/<class>/ of 32x32 PNGs: noise tinted by class."""
    classes = sorted(p.name for p in REAL.joinpath("train").iterdir()) if REAL.is_dir() else []
    classes = classes or [f"class{k}" for k in range(10)]
    rng = np.random.default_rng(0)
    for split, n in (("train", per_class), ("test", test_per_class)):
        for k, name in enumerate(classes):
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                x = rng.integers(0, 60, (32, 32, 3))
                x[..., k % 3] += 18 * k
                Image.fromarray(x.astype(np.uint8)).save(root / split / name / f"{i:04d}.png")
    return root


tmp = Path(tempfile.mkdtemp(prefix="neuralpde-06-"))
if SMALL:
    data_root = synthetic_cifar(tmp / "images", per_class=5, test_per_class=2)
    tiny = ["--epochs", "1", "--widths", "4,8", "--threads", "1"]
    table_args = ["--budget", "cpu", "--out", str(tmp / "table1"), "--no-compile", *tiny]
    size_args = ["--fractions", "0.2,0.4", "--out", str(tmp / "data_size"), *tiny]
elif REAL.is_dir():
    data_root = REAL
    # The paper configuration, as measured on this page (--config both adds the stable one).
    table_args = ["--budget", "cpu", "--out", "runs/tutorial06/table1", "--resume"]
    table_args += ["--config", "paper", "--no-swap"]
    size_args = ["--out", "runs/tutorial06/data_size"]
else:
    print(f"real CIFAR-10 JPEGs not found at {REAL}: training on synthetic images instead")
    data_root = synthetic_cifar(tmp / "images", per_class=50, test_per_class=10)
    table_args = ["--budget", "cpu", "--out", str(tmp / "table1"), "--no-compile"]
    size_args = ["--out", str(tmp / "data_size")]

# %% 3. Table 1 and Figs. 1, 3, 4: four networks, one budget, each through experiments.fit.
table_out = Path(table_args[table_args.index("--out") + 1])
assert table1.main(["--data-root", str(data_root), *table_args]) == 0
results = json.loads((table_out / "results.json").read_text())
print(f"\n{'network':<20}{'test acc':>10}{'paper':>9}{'epochs':>8}{'images/s':>10}")
for name, n in results["networks"].items():  # name: <configuration>/<arch>
    paper = "–" if n["paper_accuracy"] is None else f"{n['paper_accuracy']:.1%}"
    print(f"{name:<20}{n['test_accuracy']:>10.1%}{paper:>9}{n['epochs_done']:>8}"
          f"{n['images_per_second']:>10.0f}")  # fmt: skip
for src, dst in (("fig4_validation", "06_validation"), ("fig3_confusion", "06_confusion"),
                 ("fig1_probabilities", "06_probabilities")):  # fmt: skip
    shutil.copy(table_out / f"{src}.png", FIGURES / f"{dst}.png")

# %% 4. Fig. 2: test accuracy against the share of training data (no augmentation).
argv = ["--dataset", "imagefolder", "--data-root", str(data_root), *size_args]
assert data_size.main(argv) == 0
size_out = Path(size_args[size_args.index("--out") + 1])
shutil.copy(size_out / "data_size.png", FIGURES / "06_data_size.png")
shutil.rmtree(tmp, ignore_errors=True)
print(f"figures written to {FIGURES}")

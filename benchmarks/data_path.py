"""Image-folder data path: PIL per item per epoch against one cached uint8 tensor.

The old path (PIL decode, normalization and augmentation per item, every epoch) against
images decoded once into a cached uint8 tensor, batches normalized and augmented as tensor
operations.

    python benchmarks/data_path.py [--data-root ../shared/data/cifar10-jpeg] [--images 5000]

Both paths serve the same job: the training split of a ``train/`` + ``test/`` folder,
shuffled by ``EpochBatches``, batch 32, the paper's flip-pad-crop augmentation (the quick
recipe). "Data s/epoch" iterates one epoch of batches without a model; "train s/epoch"
is the same number of training steps (forward, cross-entropy, backward, SGD with momentum)
of the quick-width network (16-32-64, parabolic, 3 steps per stage) on ready batches; the
data share is data / (data + train). Per-epoch numbers are scaled from the subset to the
40,000 training images of CIFAR-10 by images/s. The subset is a folder of symlinks to the
first ``--images`` training images (and a tenth as many test images) of ``--data-root``;
``--tiny`` writes 200 random PNGs instead and needs no data.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from _common import header, interleaved, median, parser, setup, table
from torch.utils.data import DataLoader, Dataset

from experiments import build_model, load_data, resolve_config
from experiments._data import SPLIT_SEED, VAL_FRACTION, EpochBatches, _mix, batch_loader

ROOT = Path(__file__).resolve().parents[1]
CIFAR_TRAIN = 40_000


def _old_augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    # The old per-item augmentation: a torch.Generator per item, seeded with _mix.
    c, h, w = x.shape
    pad = max(1, h // 16)
    if torch.rand((), generator=generator) < 0.5:
        x = x.flip(-1)
    x = F.pad(x, (pad, pad, pad, pad))
    i, j = torch.randint(0, 2 * pad + 1, (2,), generator=generator).tolist()
    return x[:, i : i + h, j : j + w]


class _PerItemSplit(Dataset):
    """The old path, kept as the baseline: ``Split`` as it was before the resident images
    (torchvision ImageFolder + PIL decode, resize, ToTensor, normalize, augment per item)."""

    def __init__(self, base, indices, mean, std, augment_: bool, seed: int):
        self.base, self.indices = base, [int(i) for i in indices]
        self.mean = torch.as_tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.as_tensor(std, dtype=torch.float32).view(-1, 1, 1)
        self.augment, self.seed, self.epoch = augment_, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        x, y = self.base[self.indices[i]]
        x = (x - self.mean) / self.std
        if self.augment:
            x = _old_augment(x, torch.Generator().manual_seed(_mix(self.seed, self.epoch, i)))
        return x, int(y)


def _old_train_split(root: str, size: int, seed: int) -> _PerItemSplit:
    import torchvision
    from torchvision import transforms

    tf = transforms.Compose(
        [
            transforms.Resize((size, size)),
            transforms.Lambda(lambda im: im.convert("RGB")),
            transforms.ToTensor(),
        ]
    )
    base = torchvision.datasets.ImageFolder(os.path.join(root, "train"), tf)
    perm = torch.randperm(len(base), generator=torch.Generator().manual_seed(SPLIT_SEED))
    n_val = max(1, round(len(perm) * VAL_FRACTION))
    return _PerItemSplit(base, perm[n_val:], [0.5] * 3, [0.25] * 3, True, seed)


def _subset_folder(src: Path, dst: Path, n_train: int) -> None:
    """Symlinks to the first images of each class, ``n_train`` training images in all."""
    classes = sorted(p.name for p in (src / "train").iterdir() if p.is_dir())
    for part, n in (("train", n_train), ("test", max(len(classes), n_train // 10))):
        per = -(-n // len(classes))
        for c in classes:
            (dst / part / c).mkdir(parents=True)
            for f in sorted((src / part / c).iterdir())[:per]:
                os.symlink(f, dst / part / c / f.name)


def _random_folder(dst: Path, n_train: int) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for part, n in (("train", n_train), ("test", n_train // 10)):
        for c in range(10):
            (dst / part / f"c{c}").mkdir(parents=True)
            for i in range(max(1, n // 10)):
                arr = rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
                Image.fromarray(arr).save(dst / part / f"c{c}" / f"{i}.png")


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    default_root = ROOT.parent / "shared" / "data" / "cifar10-jpeg"
    p.add_argument("--data-root", default=str(default_root), help="a train/ + test/ folder")
    p.add_argument("--images", type=int, default=5000, help="training images in the subset")
    p.add_argument("--batch-size", type=int, default=32)
    args = p.parse_args()
    setup(args)
    repeats = args.repeats or (1 if args.tiny else 3)
    header(__doc__.splitlines()[0])
    src = Path(args.data_root)
    with tempfile.TemporaryDirectory(prefix="data_path_") as tmp:
        _run(args, src, Path(tmp), repeats)


def _run(args, src: Path, tmp: Path, repeats: int) -> None:
    os.environ["NEURALPDE_CACHE"] = str(tmp / "cache")  # a cold cache, then a warm one
    folder = tmp / "data"
    if args.tiny or not (src / "train").is_dir():
        if not args.tiny:
            sys.exit(f"no train/ under --data-root {src}; pass a folder or --tiny")
        _random_folder(folder, 200)
        what = "200 random 32x32 PNGs (--tiny)"
    else:
        _subset_folder(src, folder, args.images)
        what = f"the first {args.images} training images of {src} (symlinks)"
    print(f"data: {what}\n")

    cfg = resolve_config(
        dataset="imagefolder", data_root=str(folder), batch_size=args.batch_size, augment=True
    )
    t0 = time.perf_counter()
    data = load_data(cfg)
    cold = time.perf_counter() - t0
    t0 = time.perf_counter()
    data = load_data(cfg)
    warm = time.perf_counter() - t0
    old = _old_train_split(str(folder), 32, cfg.seed)
    n_new, n_old = len(data.train), len(old)

    def epoch_of(split, make_loader):
        sampler = EpochBatches(len(split), args.batch_size, cfg.seed)
        state = {"epoch": 0}

        def run():
            state["epoch"] += 1
            sampler.set_epoch(state["epoch"])
            split.set_epoch(state["epoch"])
            n = 0
            for x, _y in make_loader(split, sampler):
                n += len(x)
            return n

        return run

    times = interleaved(
        {
            "PIL per item": epoch_of(old, lambda s, b: DataLoader(s, batch_sampler=b)),
            "uint8 resident": epoch_of(data.train, batch_loader),
        },
        repeats,
    )
    per_image = {
        "PIL per item": median(times["PIL per item"]) / n_old,
        "uint8 resident": median(times["uint8 resident"]) / n_new,
    }

    # Training steps of the quick-width network on ready batches (the data share's other half).
    torch.manual_seed(0)
    net = build_model(cfg, 3, data.num_classes)
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    sampler = EpochBatches(len(data.train), args.batch_size, cfg.seed)
    batches = [b for b, _ in zip(batch_loader(data.train, sampler), range(2 if args.tiny else 20))]

    def steps():
        for x, y in batches:
            loss = F.cross_entropy(net(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    t_train = median(interleaved({"train": steps}, repeats)["train"])
    train_per_image = t_train / sum(len(y) for _, y in batches)

    rows = []
    for name, t in per_image.items():
        rows.append(
            {
                "path": name,
                "data s/epoch (subset)": t * (n_old if name == "PIL per item" else n_new),
                "data s/epoch (40k)": t * CIFAR_TRAIN,
                "train s/epoch (40k)": train_per_image * CIFAR_TRAIN,
                "data share": f"{t / (t + train_per_image):.1%}",
                "speedup": per_image["PIL per item"] / t,
            }
        )
    table(rows)
    print(
        f"one-time cost of the resident path: decode {len(data.train.images)} images and "
        f"write the cache {cold:.2f} s (cold), load from the cache {warm:.2f} s (warm); "
        f"{n_new} / {n_old} training images in the subset (stratified / old random "
        "hold-out); training steps timed on "
        f"{len(batches)} batches of {args.batch_size}, {torch.get_num_threads()} threads"
    )


if __name__ == "__main__":
    main()

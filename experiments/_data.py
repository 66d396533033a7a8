"""Data sets with the paper's splits and augmentation, through torchvision's own classes.

Order and augmentation are pure functions of ``(seed, epoch, index)``: a run resumed in the
middle of an epoch, or split over several processes, sees exactly the same batches.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

# The validation split is fixed (not the run's seed) so runs with different seeds are
# compared on the same data.
SPLIT_SEED = 0
# CIFAR: 40,000 / 10,000 of the 50,000 training images; STL-10: 4,000 / 1,000 of 5,000.
VAL_FRACTION = 0.2
# Digits (1,797 images, no official split): 20 % test, 10 % validation, 70 % training.
DIGITS_TEST, DIGITS_VAL = 360, 180


class DatasetNotFoundError(FileNotFoundError):
    """A data set is missing (or fails its checksum); the message says how to get it."""


@dataclass
class DataSplits:
    """Training, validation and test sets of one data set.

    Each item is ``(image (channels, height, width) float32, label int)``.
    """

    train: Dataset
    val: Dataset
    test: Dataset
    num_classes: int
    in_channels: int
    image_size: int
    classes: list[str]
    name: str


def _permutation(n: int, seed: int) -> Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))


def _mix(*ints: int) -> int:
    h = hashlib.blake2b(repr(ints).encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") & ((1 << 63) - 1)


def augment(x: Tensor, generator: torch.Generator) -> Tensor:
    """The paper's augmentation: random horizontal flip, zero padding by 1/16 of the size
    on each side, random crop back to the original size.

    Args:
        x: ``(channels, height, width)``, already normalized (so the zero padding is the
            mean colour).
        generator: the source of randomness (one per sample: see :class:`Split`).
    """
    c, h, w = x.shape
    pad = max(1, h // 16)
    if torch.rand((), generator=generator) < 0.5:
        x = x.flip(-1)
    x = F.pad(x, (pad, pad, pad, pad))
    i, j = torch.randint(0, 2 * pad + 1, (2,), generator=generator).tolist()
    return x[:, i : i + h, j : j + w]


class Split(Dataset):
    """``indices`` of a base data set, normalized, optionally augmented.

    Augmentation of item ``i`` in epoch ``e`` draws from a generator seeded with
    ``(seed, e, i)``: independent of worker processes, batch position and resumption.

    Args:
        base: a data set whose items are ``(tensor (c, h, w), label)``.
        indices: the items of ``base`` in this split.
        mean, std: ``(c,)`` per-channel normalization.
        augment: apply :func:`augment`.
        seed: the run's seed.
    """

    def __init__(self, base, indices, mean, std, augment: bool = False, seed: int = 0):
        self.base = base
        self.indices = [int(i) for i in indices]
        self.mean = torch.as_tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.as_tensor(std, dtype=torch.float32).view(-1, 1, 1)
        self.augment = augment
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        x, y = self.base[self.indices[i]]
        x = (x - self.mean) / self.std
        if self.augment:
            g = torch.Generator().manual_seed(_mix(self.seed, self.epoch, i))
            x = augment(x, g)
        return x, int(y)


class _TensorImages(Dataset):
    def __init__(self, images: Tensor, labels: Tensor):
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.images[i], int(self.labels[i])


def _stats(images: np.ndarray | Tensor, channel_axis: int) -> tuple[Tensor, Tensor]:
    x = torch.as_tensor(np.asarray(images), dtype=torch.float64) / 255.0
    dims = [d for d in range(x.dim()) if d != channel_axis % x.dim()]
    return x.mean(dim=dims).float(), x.std(dim=dims).float().clamp_min(1e-3)


def _subset(indices: Tensor, fraction: float) -> Tensor:
    return indices[: max(1, round(len(indices) * fraction))]


def _digits(cfg) -> DataSplits:
    from sklearn.datasets import load_digits

    d = load_digits()
    images = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    labels = torch.tensor(d.target)
    perm = _permutation(len(labels), SPLIT_SEED)
    test, val, train = (
        perm[:DIGITS_TEST],
        perm[DIGITS_TEST : DIGITS_TEST + DIGITS_VAL],
        perm[DIGITS_TEST + DIGITS_VAL :],
    )
    train = _subset(train, cfg.train_fraction)
    base = _TensorImages(images, labels)
    m, s = images[train].mean(), images[train].std()
    mk = lambda idx, aug: Split(base, idx, [m], [s], aug, cfg.seed)  # noqa: E731
    return DataSplits(
        mk(train, cfg.augment),
        mk(val, False),
        mk(test, False),
        10,
        1,
        8,
        [str(k) for k in range(10)],
        "digits",
    )


_HOW_TO_GET = {
    "cifar10": (
        "{root}/cifar-10-batches-py/ holding data_batch_1 ... data_batch_5, test_batch and "
        "batches.meta (the 'python version' of CIFAR-10 from "
        "https://www.cs.toronto.edu/~kriz/cifar.html, unpacked into {root})"
    ),
    "cifar100": (
        "{root}/cifar-100-python/ holding train, test and meta (the 'python version' of "
        "CIFAR-100 from https://www.cs.toronto.edu/~kriz/cifar.html, unpacked into {root})"
    ),
    "stl10": (
        "{root}/stl10_binary/ holding train_X.bin, train_y.bin, test_X.bin, test_y.bin and "
        "unlabeled_X.bin (stl10_binary.tar.gz from https://cs.stanford.edu/~acoates/stl10/, "
        "unpacked into {root})"
    ),
}


def _missing(name: str, root: str, err: Exception) -> DatasetNotFoundError:
    where = _HOW_TO_GET[name].format(root=root)
    return DatasetNotFoundError(
        f"{name} not found (or it failed torchvision's checksum) under --data-root {root!r}: "
        f"{err}. Run again with --download to fetch it (needs internet), or put it in the "
        f"expected layout: {where}."
    )


def _torchvision(cfg) -> DataSplits:
    import torchvision
    from torchvision.transforms import ToTensor

    root, name = cfg.data_root, cfg.dataset
    to_tensor = ToTensor()
    try:
        if name in ("cifar10", "cifar100"):
            cls = (
                torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
            )
            train_base = cls(root, train=True, transform=to_tensor, download=cfg.download)
            test_base = cls(root, train=False, transform=to_tensor, download=cfg.download)
            pixels, axis, classes = train_base.data, -1, list(train_base.classes)
            size = 32
        else:
            cls = torchvision.datasets.STL10
            train_base = cls(root, split="train", transform=to_tensor, download=cfg.download)
            test_base = cls(root, split="test", transform=to_tensor, download=cfg.download)
            pixels, axis, size = train_base.data, 1, 96
            classes = list(getattr(train_base, "classes", [str(k) for k in range(10)]))
    except RuntimeError as err:
        if "not found or corrupted" in str(err):
            raise _missing(name, root, err) from None
        raise
    except OSError as err:  # a failed download (no internet, refused, disk full)
        if not cfg.download or isinstance(err, DatasetNotFoundError):
            raise
        where = _HOW_TO_GET[name].format(root=root)
        raise DatasetNotFoundError(
            f"downloading {name} into {root!r} failed ({err}); fetch it by hand and put it "
            f"in the expected layout: {where}"
        ) from None
    perm = _permutation(len(train_base), SPLIT_SEED)
    n_val = round(len(perm) * VAL_FRACTION)
    val, train = perm[:n_val], _subset(perm[n_val:], cfg.train_fraction)
    mean, std = _stats(pixels[train.numpy()], axis)
    return DataSplits(
        Split(train_base, train, mean, std, cfg.augment, cfg.seed),
        Split(train_base, val, mean, std, False, cfg.seed),
        Split(test_base, range(len(test_base)), mean, std, False, cfg.seed),
        len(classes),
        3,
        size,
        classes,
        name,
    )


def _image_folder(cfg) -> DataSplits:
    import torchvision
    from torchvision import transforms

    root, size = cfg.data_root, cfg.image_size or 32
    tf = transforms.Compose(
        [transforms.Resize((size, size)), transforms.Lambda(lambda im: im.convert("RGB"))]
    )
    tf = transforms.Compose([tf, transforms.ToTensor()])
    layout = (
        f"{root}/train/<class>/<image> and {root}/test/<class>/<image> (any format PIL reads; "
        f"the same class folders in both); {VAL_FRACTION:.0%} of train is held out for "
        "validation"
    )
    try:
        train_base = torchvision.datasets.ImageFolder(os.path.join(root, "train"), tf)
        test_base = torchvision.datasets.ImageFolder(os.path.join(root, "test"), tf)
    except (FileNotFoundError, RuntimeError) as err:
        raise DatasetNotFoundError(
            f"imagefolder: no images under --data-root {root!r} ({err}); expected {layout}"
        ) from None
    if train_base.classes != test_base.classes:
        raise DatasetNotFoundError(
            f"imagefolder: train classes {train_base.classes} differ from test classes "
            f"{test_base.classes}; expected {layout}"
        )
    perm = _permutation(len(train_base), SPLIT_SEED)
    n_val = max(1, round(len(perm) * VAL_FRACTION))
    val, train = perm[:n_val], _subset(perm[n_val:], cfg.train_fraction)
    mean, std = torch.full((3,), 0.5), torch.full((3,), 0.25)
    return DataSplits(
        Split(train_base, train, mean, std, cfg.augment, cfg.seed),
        Split(train_base, val, mean, std, False, cfg.seed),
        Split(test_base, range(len(test_base)), mean, std, False, cfg.seed),
        len(train_base.classes),
        3,
        size,
        list(train_base.classes),
        "imagefolder",
    )


def load_data(cfg: Any) -> DataSplits:
    """The splits of ``cfg.dataset`` (a :class:`TrainConfig`).

    digits: scikit-learn's 1,797 8×8 images, 1,257 / 180 / 360 train / val / test.
    cifar10, cifar100: torchvision's CIFAR10/CIFAR100, 40,000 / 10,000 of the training set
    plus the 10,000 test images. stl10: torchvision's STL10, 4,000 / 1,000 of the 5,000
    labelled training images plus the 8,000 test images. imagefolder: torchvision's
    ImageFolder on ``data_root/train`` (80 / 20) and ``data_root/test``.

    Raises:
        DatasetNotFoundError: the data set is missing; the message gives ``--download`` and
            the expected layout under ``data_root``.
    """
    if cfg.dataset == "digits":
        return _digits(cfg)
    if cfg.dataset == "imagefolder":
        return _image_folder(cfg)
    return _torchvision(cfg)


class EpochBatches(torch.utils.data.Sampler):
    """Batches of indices: a permutation per epoch, cut into global batches, each split
    evenly over ``world`` processes (rank ``r`` takes the ``r``-th slice).

    The union of the slices of one global batch is exactly the batch a single process
    draws, so ``world`` processes with per-process batch ``batch_size / world`` average to
    the same gradient as one process with ``batch_size``. Under several processes the
    last, incomplete global batch is dropped (its slices could not be equal).

    ``set_epoch(epoch, start)`` selects the epoch and skips its first ``start`` batches
    (resumption).
    """

    def __init__(
        self, n: int, batch_size: int, seed: int, rank: int = 0, world: int = 1, shuffle=True
    ):
        if batch_size % world:
            raise ValueError(
                f"--batch-size {batch_size} must be divisible by the number of processes {world}"
            )
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.rank, self.world, self.shuffle = rank, world, shuffle
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def num_batches(self) -> int:
        full, rest = divmod(self.n, self.batch_size)
        return full + (1 if rest and self.world == 1 else 0)

    def __len__(self) -> int:
        return self.num_batches() - self.start

    def __iter__(self):
        if self.shuffle:
            order = _permutation(self.n, _mix(self.seed, self.epoch)).tolist()
        else:
            order = list(range(self.n))
        per = self.batch_size // self.world
        for b in range(self.start, self.num_batches()):
            batch = order[b * self.batch_size : (b + 1) * self.batch_size]
            if self.world > 1:
                batch = batch[self.rank * per : (self.rank + 1) * per]
            yield batch

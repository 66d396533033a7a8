"""Data sets with the paper's splits and augmentation: torchvision's CIFAR/STL-10 classes,
image folders (``_images.py``) and scikit-learn's digits.

Every split holds its images resident as one tensor (``uint8`` for photographs); a batch
is normalized and augmented as tensor operations where the images are (the training
device when they fit there). Order and augmentation are pure functions of
``(seed, epoch, index)``: a run resumed in the middle of an epoch, or split over several
processes, sees exactly the same batches.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, default_collate

# The validation split is fixed (not the run's seed) so runs with different seeds are
# compared on the same data.
SPLIT_SEED = 0
# CIFAR: 40,000 / 10,000 of the 50,000 training images; STL-10: 4,000 / 1,000 of 5,000.
VAL_FRACTION = 0.2
# Digits (1,797 images, no official split): 20 % test, 10 % validation, 70 % training.
DIGITS_TEST, DIGITS_VAL = 360, 180


class DatasetNotFoundError(FileNotFoundError):
    """A data set is missing, incomplete or unreadable (or fails its checksum); the message
    names the folder or files and says how to fix it."""


@dataclass
class DataSplits:
    """Training, validation and test sets of one data set.

    Each item is ``(image (channels, height, width) float32, label int)``. The splits that
    :func:`load_data` returns are :class:`Split` objects over resident images: a batch of indices is
    also served whole (``split.__getitems__(indices)``, what ``DataLoader`` calls under a
    batch sampler) as tensors on the images' device, see :meth:`to`.

    ``layout`` says where each split came from (folders, held-out shares, split seed).
    """

    train: Dataset
    val: Dataset
    test: Dataset
    num_classes: int
    in_channels: int
    image_size: int
    classes: list[str]
    name: str
    layout: str = ""

    def to(self, device: torch.device | str) -> DataSplits:
        """Move the images of every :class:`Split` to ``device`` (in place; returns self).

        Normalization and augmentation then run there, batch by batch. On a GPU the images
        move only when they take at most half of its free memory; otherwise they stay in
        host memory and only batches are copied.
        """
        device = torch.device(device)
        splits = [s for s in (self.train, self.val, self.test) if isinstance(s, Split)]
        if device.type == "cuda":
            need = sum(t.nbytes for t in {id(s.images): s.images for s in splits}.values())
            if need > torch.cuda.mem_get_info(device)[0] / 2:
                return self
        moved: dict[int, Tensor] = {}
        for s in splits:
            s.to(device, moved)
        return self


def _permutation(n: int, seed: int) -> Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))


def _mix(*ints: int) -> int:
    h = hashlib.blake2b(repr(ints).encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") & ((1 << 63) - 1)


def _hash32(x: np.ndarray) -> np.ndarray:
    # Wellons' "lowbias32" integer hash (https://nullprogram.com/blog/2018/07/31/), in
    # uint32 arithmetic that wraps modulo 2^32 as the hash intends.
    x = x ^ (x >> np.uint32(16))
    x = x * np.uint32(0x7FEB352D)
    x = x ^ (x >> np.uint32(15))
    x = x * np.uint32(0x846CA68B)
    return x ^ (x >> np.uint32(16))


def augment_params(seed: int, epoch: int, index, pad: int) -> tuple[Tensor, Tensor, Tensor]:
    """The random numbers of :func:`augment` for items ``index`` of epoch ``epoch``: a pure
    function of ``(seed, epoch, index)`` (a per-epoch key from :func:`_mix`, then an
    integer hash of each index), so independent of batches, processes and resumption.

    Args:
        index: ``(batch,)`` positions in the split (ints below 2^32).
        pad: the padding; offsets are drawn from ``0 .. 2 pad``.

    Returns:
        ``flip (batch,) bool``, ``rows (batch,)``, ``cols (batch,)`` int64 crop offsets,
        on the CPU.
    """
    key = _mix(seed, epoch)
    lo, hi = np.uint32(key & 0xFFFFFFFF), np.uint32(key >> 32 & 0xFFFFFFFF)
    i = np.asarray(index, dtype=np.int64).astype(np.uint32)
    h = _hash32(_hash32(i ^ lo) ^ hi).astype(np.int64)
    n = 2 * pad + 1
    # 16 and 15 bits modulo n = 2 pad + 1: a bias below n / 2^15, far under the noise.
    t = torch.from_numpy(np.stack([h & 1, (h >> 1 & 0xFFFF) % n, (h >> 17) % n]))
    return t[0].bool(), t[1], t[2]


def augment(x: Tensor, flip: bool, row: int, col: int) -> Tensor:
    """The paper's augmentation: horizontal flip (if ``flip``), zero padding by 1/16 of the
    size on each side (at least 1 pixel), crop back to the original size at ``(row, col)``
    of the padded image.

    Args:
        x: ``(channels, height, width)``, already normalized (so the zero padding is the
            mean colour).
        flip, row, col: the random numbers (:func:`augment_params`; ``row``, ``col`` in
            ``0 .. 2 pad``).
    """
    c, h, w = x.shape
    pad = max(1, h // 16)
    if flip:
        x = x.flip(-1)
    x = F.pad(x, (pad, pad, pad, pad))
    return x[:, row : row + h, col : col + w]


def _crop_source(flip: Tensor, rows: Tensor, cols: Tensor, h: int, w: int):
    # For each output pixel of augment: the flat index of the input pixel it copies
    # (clamped) and whether that pixel is inside the image (else it is zero padding).
    # Flipping before zero padding is flipping after it: column q of the flipped padded
    # image is column w + 2 pad - 1 - q of the padded one.
    pad = max(1, h // 16)
    r = rows[:, None] + torch.arange(h, device=rows.device) - pad
    q = cols[:, None] + torch.arange(w, device=rows.device)
    q = torch.where(flip[:, None], w + pad - 1 - q, q - pad)
    inside = ((r >= 0) & (r < h))[:, :, None] & ((q >= 0) & (q < w))[:, None, :]
    index = r.clamp(0, h - 1)[:, :, None] * w + q.clamp(0, w - 1)[:, None, :]
    return index.view(len(rows), 1, h * w), inside.view(len(rows), 1, h, w)


def _gather(x: Tensor, index: Tensor) -> Tensor:
    b, c, h, w = x.shape
    return x.flatten(2).gather(2, index.expand(b, c, h * w)).view(b, c, h, w)


def augment_batch(x: Tensor, flip: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
    """:func:`augment` of a whole batch, as tensor operations on ``x``'s device (one
    gather and one mask; nothing padded).

    Args:
        x: ``(batch, channels, height, width)``, normalized.
        flip: ``(batch,)`` bool; rows, cols: ``(batch,)`` int64 crop offsets in
            ``[0, 2 pad]`` with ``pad = max(1, height // 16)``.

    Returns:
        ``(batch, channels, height, width)``; item ``k`` equals
        ``augment(x[k], flip[k], rows[k], cols[k])`` bit for bit.
    """
    index, inside = _crop_source(flip, rows, cols, x.shape[-2], x.shape[-1])
    return _gather(x, index).masked_fill_(~inside, 0.0)


class _Batch:
    """A batch served whole: ``x (batch, c, h, w)``, ``y (batch,)``. Also a sequence of
    ``(x[k], y[k])``, so that torch's default collate still stacks it correctly."""

    __slots__ = ("x", "y")

    def __init__(self, x: Tensor, y: Tensor):
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, k: int) -> tuple[Tensor, Tensor]:
        return self.x[k], self.y[k]

    def __iter__(self):
        return ((self.x[k], self.y[k]) for k in range(len(self.y)))


def collate(batch) -> Any:
    """``(x, y)`` of a batch a :class:`Split` served whole; torch's default collate of
    anything else (a list of items)."""
    if isinstance(batch, _Batch):
        return batch.x, batch.y
    return default_collate(batch)


def batch_loader(ds, sampler, *, workers: int = 0, device="cpu", seed: int = 0) -> DataLoader:
    """A ``DataLoader`` of ``ds`` under the batch sampler ``sampler`` that takes whole
    batches from a :class:`Split` (worker processes and pinned memory only when its images
    are in host memory)."""
    resident = getattr(ds, "device", torch.device("cpu")).type != "cpu"
    # A private generator: creating an iterator must not draw from the global RNG, or a run
    # resumed mid-epoch would see different random numbers from one that never stopped.
    return DataLoader(
        ds,
        batch_sampler=sampler,
        num_workers=0 if resident else workers,
        pin_memory=str(device).startswith("cuda") and not resident,
        collate_fn=collate,
        generator=torch.Generator().manual_seed(seed),
    )


class Split(Dataset):
    """Items ``indices`` of resident images, normalized, optionally augmented.

    Augmentation of item ``i`` in epoch ``e`` is a pure function of ``(seed, e, i)``
    (:func:`augment_params`): independent of worker processes, batch position and
    resumption.

    ``split[i]`` is one item (on the CPU); ``split.__getitems__([i, ...])`` a whole batch,
    normalized and augmented with tensor operations on the images' device, equal to the
    items stacked.

    Args:
        images: ``(n, channels, height, width)``, ``uint8`` (pixel / 255) or float.
        labels: ``(n,)`` class indices.
        indices: the images in this split.
        mean, std: ``(channels,)`` per-channel normalization.
        augment: apply :func:`augment`.
        seed: the run's seed.
    """

    def __init__(self, images, labels, indices, mean, std, augment: bool = False, seed: int = 0):
        self.images = torch.as_tensor(images)
        self.labels = torch.as_tensor(labels, dtype=torch.int64)
        self.indices = (
            indices.tolist() if isinstance(indices, Tensor) else [int(i) for i in indices]
        )
        self.mean = torch.as_tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.as_tensor(std, dtype=torch.float32).view(-1, 1, 1)
        self.augment = augment
        self.seed = seed
        self.epoch = 0
        self._rows = torch.tensor(self.indices, dtype=torch.int64)
        self._on = (self._rows, self.labels, self.mean, self.std)

    @property
    def device(self) -> torch.device:
        return self.images.device

    def to(self, device, moved: dict[int, Tensor] | None = None) -> Split:
        """Move the images here (in place); ``moved`` shares one copy between splits."""
        moved = {} if moved is None else moved
        key = id(self.images)
        if key not in moved:
            moved[key] = self.images.to(device)
        self.images = moved[key]
        self._on = tuple(t.to(device) for t in (self._rows, self.labels, self.mean, self.std))
        return self

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.indices)

    @staticmethod
    def _float(x: Tensor) -> Tensor:
        # ToTensor's arithmetic (to float, then / 255), so the pixels are bit for bit those
        # of torchvision's per-image path.
        return x.to(torch.float32).div(255) if x.dtype == torch.uint8 else x.to(torch.float32)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        j = self.indices[i]
        x = (self._float(self.images[j].cpu()) - self.mean) / self.std
        if self.augment:
            pad = max(1, x.shape[-2] // 16)
            flip, r, q = augment_params(self.seed, self.epoch, [i], pad)
            x = augment(x, bool(flip), int(r), int(q))
        return x, int(self.labels[j])

    def __getitems__(self, items: list[int]) -> _Batch:
        rows, labels, mean, std = self._on
        pos = torch.as_tensor(items, dtype=torch.int64)
        j = rows[pos.to(rows.device)]
        u = self.images.index_select(0, j)  # several times faster than images[j] for uint8
        if not self.augment:
            return _Batch((self._float(u) - mean) / std, labels[j])
        # augment_batch, with the crop gathered from the uint8 pixels (a quarter of the
        # bytes) before normalizing: the same values, as normalization is per pixel.
        h, w = u.shape[-2:]
        flip, r, q = augment_params(self.seed, self.epoch, items, max(1, h // 16))
        index, inside = _crop_source(*(t.to(u.device) for t in (flip, r, q)), h, w)
        x = (self._float(_gather(u, index)) - mean) / std
        return _Batch(x.masked_fill_(~inside, 0.0), labels[j])


def _uint8_stats(images: Tensor, indices: Tensor) -> tuple[Tensor, Tensor]:
    """Per-channel mean and standard deviation (``n - 1``) of ``images[indices] / 255``,
    exact: from integer histograms of the pixel values (no float copy of the images)."""
    c = images.shape[1]
    hist = torch.zeros(c, 256, dtype=torch.int64)
    for s in range(0, len(indices), 2048):
        block = images[indices[s : s + 2048].to(images.device)].cpu()
        for k in range(c):
            hist[k] += torch.bincount(block[:, k].reshape(-1), minlength=256)
    v = torch.arange(256, dtype=torch.int64)
    n = int(hist[0].sum())
    s1, s2 = (hist * v).sum(1).tolist(), (hist * v * v).sum(1).tolist()
    mean = [a / (n * 255) for a in s1]
    # n s2 - s1^2 in Python's exact integers: the difference of two ~1e20 numbers.
    var = [(n * b - a * a) / (n * max(n - 1, 1) * 255**2) for a, b in zip(s1, s2)]
    return torch.tensor(mean).float(), torch.tensor(var).sqrt().float().clamp_min(1e-3)


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
    m, s = images[train].mean(), images[train].std()
    mk = lambda idx, aug: Split(images, labels, idx, [m], [s], aug, cfg.seed)  # noqa: E731
    return DataSplits(
        mk(train, cfg.augment),
        mk(val, False),
        mk(test, False),
        10,
        1,
        8,
        [str(k) for k in range(10)],
        "digits",
        f"scikit-learn's digits, split with seed {SPLIT_SEED}",
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

    root, name = cfg.data_root, cfg.dataset
    try:
        if name in ("cifar10", "cifar100"):
            cls = (
                torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
            )
            train_base = cls(root, train=True, download=cfg.download)
            test_base = cls(root, train=False, download=cfg.download)
            classes, size = list(train_base.classes), 32
            # (n, h, w, c) rows as torchvision unpickles them.
            as_tensor = lambda d: torch.from_numpy(d).permute(0, 3, 1, 2).contiguous()  # noqa: E731
            labels = lambda d: torch.tensor(d.targets)  # noqa: E731
        else:
            cls = torchvision.datasets.STL10
            train_base = cls(root, split="train", download=cfg.download)
            test_base = cls(root, split="test", download=cfg.download)
            size = 96
            classes = list(getattr(train_base, "classes", [str(k) for k in range(10)]))
            # torchvision already turned STL-10's column-major images into (n, c, h, w).
            as_tensor = lambda d: torch.from_numpy(d).contiguous()  # noqa: E731
            labels = lambda d: torch.from_numpy(d.labels.astype(np.int64))  # noqa: E731
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
    images, test_images = as_tensor(train_base.data), as_tensor(test_base.data)
    perm = _permutation(len(images), SPLIT_SEED)
    n_val = round(len(perm) * VAL_FRACTION)
    val, train = perm[:n_val], _subset(perm[n_val:], cfg.train_fraction)
    mean, std = _uint8_stats(images, train)
    y, y_test = labels(train_base), labels(test_base)
    return DataSplits(
        Split(images, y, train, mean, std, cfg.augment, cfg.seed),
        Split(images, y, val, mean, std, False, cfg.seed),
        Split(test_images, y_test, range(len(y_test)), mean, std, False, cfg.seed),
        len(classes),
        3,
        size,
        classes,
        name,
        f"torchvision's {cls.__name__} under {root}: {VAL_FRACTION:.0%} of the training set "
        f"held out for validation (seed {SPLIT_SEED}), the official test set",
    )


def _image_folder(cfg) -> DataSplits:
    from ._images import load_image_folder

    size = cfg.image_size or 32
    f = load_image_folder(cfg.data_root, size)
    train = _subset(f.parts["train"], cfg.train_fraction)
    mean, std = _uint8_stats(f.images, train)
    mk = lambda idx, aug: Split(f.images, f.labels, idx, mean, std, aug, cfg.seed)  # noqa: E731
    return DataSplits(
        mk(train, cfg.augment),
        mk(f.parts["val"], False),
        mk(f.parts["test"], False),
        len(f.classes),
        3,
        size,
        list(f.classes),
        "imagefolder",
        f.layout,
    )


def load_data(cfg: Any) -> DataSplits:
    """The splits of ``cfg.dataset`` (a :class:`TrainConfig`).

    digits: scikit-learn's 1,797 8×8 images, 1,257 / 180 / 360 train / val / test.
    cifar10, cifar100: torchvision's CIFAR10/CIFAR100, 40,000 / 10,000 of the training set
    plus the 10,000 test images. stl10: torchvision's STL10, 4,000 / 1,000 of the 5,000
    labelled training images plus the 8,000 test images. imagefolder: class folders under
    ``data_root`` as ``train/`` + ``test/``, ``train/`` + ``val/`` (+ ``test/``) or one root
    of class folders (held-out splits drawn per class with ``SPLIT_SEED``), every image
    decoded once into a cached ``uint8`` tensor and resized to ``cfg.image_size``.
    Normalization: per-channel mean and standard deviation of the training split.

    Raises:
        DatasetNotFoundError: the data set is missing; the message gives ``--download`` and
            the expected layout under ``data_root``; for an image folder also a class
            folder without images, a class missing from one split or unreadable files (each
            named).
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

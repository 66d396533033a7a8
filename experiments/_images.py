"""Image folders as users have them: layouts, one decode into a ``uint8`` tensor, a cache.

A folder is decoded once (torchvision's decoders, PIL for the formats they lack) into one
``(N, 3, S, S)`` ``uint8`` tensor, cached in the user's cache directory (never beside the
data, which may be read-only) under a key made of every file's path, size and modification
time, the image size and torchvision's version: adding, removing or touching a file, or
asking for another size, decodes again.
"""

from __future__ import annotations

import hashlib
import os
import sys
import warnings
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

# torchvision's ImageFolder extensions, plus GIF (torchvision.io decodes it too).
IMAGE_EXTENSIONS = tuple(".jpg .jpeg .png .ppm .pgm .bmp .tif .tiff .webp .gif".split())
# One root of class folders: 20 % of each class is the test split, 20 % of the rest the
# validation split (64 / 16 / 20 in all).
TEST_FRACTION = 0.2
CACHE_ENV = "NEURALPDE_CACHE"
# Bump when the cached tensor's meaning changes (decoder options, resizing).
_CACHE_FORMAT = 1
_CHUNK = 256


def cache_dir() -> Path:
    """Where decoded images are cached: ``$NEURALPDE_CACHE``, else
    ``$XDG_CACHE_HOME/neuralpde``, else ``~/.cache/neuralpde``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "neuralpde"


def layouts(root: str) -> str:
    return (
        f"one of: {root}/train/<class>/<image> with {root}/test/<class>/<image> "
        f"(validation: 20 % of train); {root}/train/... with {root}/val/... and optionally "
        f"{root}/test/... (without test/, val/ is the test split and validation is 20 % of "
        f"train); or class folders directly under {root} ({root}/<class>/<image>, split "
        f"64 / 16 / 20 into train / validation / test). Images: "
        f"{', '.join(IMAGE_EXTENSIONS)} (any case)"
    )


@dataclass
class FolderImages:
    """Every image of an image folder, decoded, with its splits.

    ``images (n, 3, size, size) uint8``, ``labels (n,) int64`` (indices into ``classes``),
    ``files`` their paths relative to the root, ``parts`` the indices of ``train``, ``val``
    and ``test``, ``layout`` where each split came from.
    """

    images: Tensor
    labels: Tensor
    files: list[str]
    classes: list[str]
    parts: dict[str, Tensor]
    layout: str


def _not_found(message: str) -> Exception:
    from ._data import DatasetNotFoundError

    return DatasetNotFoundError(message)


def _visible_dirs(folder: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))


def _walk(folder: str, rel: str, images: list, stats: list, other: list) -> None:
    # Sorted, recursive, following links (as ImageFolder); paths built as strings because
    # os.path.relpath on 60,000 files costs seconds.
    dirs = []
    for e in sorted(os.scandir(folder), key=lambda e: e.name):
        if e.name.startswith("."):
            continue
        if e.is_dir():
            dirs.append(e)
        elif e.name.lower().endswith(IMAGE_EXTENSIONS):
            st = e.stat()
            images.append(f"{rel}{e.name}")
            stats.append(f"{rel}{e.name}\t{st.st_size}\t{st.st_mtime_ns}")
        else:
            other.append(f"{rel}{e.name}")
    for e in dirs:
        _walk(e.path, f"{rel}{e.name}/", images, stats, other)


def _scan(folder: Path, part: str, root_name: str):
    """Class folders of one split folder: classes, ``(relpath, class)`` of each image in
    sorted order, ``relpath\tsize\tmtime_ns`` of each, and the files that are not images."""
    classes = _visible_dirs(folder)
    shown = os.path.join(root_name, part)
    if not classes:
        raise _not_found(
            f"imagefolder: {shown} has no class folders (expected {shown}/<class>/<image>); "
            f"expected {layouts(root_name)}"
        )
    entries, stats, ignored = [], [], []
    prefix = f"{part}/" if part else ""
    for k, c in enumerate(classes):
        found: list[str] = []
        _walk(str(folder / c), f"{prefix}{c}/", found, stats, ignored)
        if not found:
            raise _not_found(
                f"imagefolder: no images in {os.path.join(shown, c)} (a class folder needs at "
                f"least one file ending in {', '.join(IMAGE_EXTENSIONS)})"
            )
        entries += [(r, k) for r in found]
    loose = [
        f"{prefix}{e.name}"
        for e in os.scandir(folder)
        if e.is_file() and not e.name.startswith(".")
    ]
    return classes, entries, stats, ignored + sorted(loose)


def _hold_out(labels: Tensor, fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """``(held, rest)`` positions: ``fraction`` of each class (at least one of a class
    with two or more members), both in the order of one permutation seeded with ``seed``."""
    perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    counts = torch.bincount(labels, minlength=int(labels.max()) + 1 if len(labels) else 0)
    want = [max(1, round(int(n) * fraction)) if n >= 2 else 0 for n in counts]
    taken = [0] * len(want)
    held = torch.zeros(len(labels), dtype=torch.bool)
    classes = labels.tolist()
    for p in perm.tolist():
        c = classes[p]
        if taken[c] < want[c]:
            taken[c] += 1
            held[p] = True
    return perm[held[perm]], perm[~held[perm]]


def _decode_one(path: str, size: int) -> Tensor:
    from torchvision.io import ImageReadMode, decode_image
    from torchvision.transforms.v2 import functional as TF

    with open(path, "rb") as f:
        data = torch.frombuffer(bytearray(f.read()), dtype=torch.uint8)
    try:
        img = decode_image(data, mode=ImageReadMode.RGB, apply_exif_orientation=True)
    except RuntimeError as tv_err:
        # torchvision.io reads JPEG, PNG, GIF and WebP; PIL (torchvision's own dependency)
        # the rest of ImageFolder's formats (BMP, TIFF, PPM/PGM).
        import numpy as np
        from PIL import Image, ImageOps

        try:
            with Image.open(path) as im:
                arr = np.array(ImageOps.exif_transpose(im).convert("RGB"))
        except Exception as pil_err:
            raise ValueError(f"torchvision: {tv_err}; PIL: {pil_err}") from None
        img = torch.from_numpy(arr).permute(2, 0, 1)
    if img.dtype != torch.uint8:  # 16-bit PNG
        img = TF.to_dtype(img, torch.uint8, scale=True)
    if tuple(img.shape[-2:]) != (size, size):
        img = TF.resize(img, [size, size], antialias=True)
    return img


def decode(paths: list[str], size: int, desc: str = "decoding") -> Tensor:
    """``(len(paths), 3, size, size) uint8``: each image decoded, converted to RGB and, when
    it is not ``size`` × ``size``, resized (bilinear, antialiased; not cropped).

    Raises:
        DatasetNotFoundError: some files could not be decoded; the message names each.
    """
    out = torch.empty(len(paths), 3, size, size, dtype=torch.uint8)
    bad: list[str] = []

    def work(start: int) -> list[str]:
        errors = []
        for k in range(start, min(start + _CHUNK, len(paths))):
            try:
                out[k] = _decode_one(paths[k], size)
            except (OSError, ValueError, RuntimeError) as err:
                errors.append(f"{paths[k]} ({str(err).strip().splitlines()[0][:200]})")
        return errors

    # The decoders release the GIL: threads use the cores without copying the result, as
    # many as torch is told to use (--threads), so a one-thread run stays on one core.
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
    threads = max(1, min(8, cores, torch.get_num_threads()))
    from tqdm import tqdm

    with (
        warnings.catch_warnings(),
        ThreadPoolExecutor(threads) as pool,
        tqdm(
            total=len(paths),
            desc=desc,
            unit="img",
            disable=not sys.stderr.isatty(),
            file=sys.stderr,
        ) as bar,
    ):
        # torchvision 0.29 deprecates its image decoders in favour of TorchCodec; they are
        # what this version has (and PIL takes over where they fail).
        warnings.filterwarnings("ignore", "The image decoding", DeprecationWarning)
        futures = {pool.submit(work, s): s for s in range(0, len(paths), _CHUNK)}
        for fut in as_completed(futures):
            bad += fut.result()
            bar.update(min(_CHUNK, len(paths) - futures[fut]))
    if bad:
        bad.sort()
        raise _not_found(
            f"imagefolder: {len(bad)} file(s) could not be decoded as images (fix or remove "
            "them):\n  " + "\n  ".join(bad)
        )
    return out


def _cached_decode(root: Path, rels: list[str], stats: list[str], size: int) -> Tensor:
    from importlib.metadata import version

    key = hashlib.sha256()
    key.update(f"{_CACHE_FORMAT}\n{version('torchvision')}\n{size}\n".encode())
    key.update("\n".join(stats).encode())
    where = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:16]
    stem = f"imagefolder-{where}-{size}px"
    folder = cache_dir()
    path = folder / f"{stem}-{key.hexdigest()[:24]}.pt"
    if path.is_file():
        try:
            images = torch.load(path, mmap=True, weights_only=True)
            if isinstance(images, Tensor) and tuple(images.shape) == (len(rels), 3, size, size):
                return images
        except Exception as err:  # a torn or foreign file: decode again and replace it
            warnings.warn(f"ignoring the unreadable image cache {path} ({err})", stacklevel=3)
    images = decode([str(root / r) for r in rels], size, desc=f"decoding {root} (once)")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        torch.save(images, tmp)
        os.replace(tmp, path)
        # The folder changed (or the decoder did): earlier versions are stale.
        for old in folder.glob(f"{stem}-*.pt"):
            if old != path:
                old.unlink(missing_ok=True)
    except OSError as err:
        warnings.warn(
            f"could not write the decoded-image cache to {folder} ({err}); the images will be "
            f"decoded again next time (set {CACHE_ENV} to a writable folder)",
            stacklevel=3,
        )
    return images


def load_image_folder(root: str, size: int) -> FolderImages:
    """The images and splits of an image folder in any of the layouts :func:`layouts` lists.

    Splits that the folder does not provide are drawn per class with ``SPLIT_SEED``.

    Raises:
        DatasetNotFoundError: no such folder, an unknown layout, a class folder without
            images, a class missing from one split, or unreadable files; the message names
            the folder or files and the expected layout.
    """
    from ._data import SPLIT_SEED, VAL_FRACTION

    base = Path(root)
    if not base.is_dir():
        raise _not_found(
            f"imagefolder: --data-root {root!r} is not a folder; expected {layouts(root)}"
        )
    sub = {d for d in _visible_dirs(base)}
    if "train" in sub:
        given = [p for p in ("train", "val", "test") if p in sub]
        other = sorted(sub - {"train", "val", "test"})
        if other:
            warnings.warn(
                f"imagefolder: folders {other} under {root} are not train/, val/ or test/ "
                "and were not loaded",
                stacklevel=2,
            )
        if len(given) == 1:
            raise _not_found(
                f"imagefolder: {os.path.join(root, 'train')} has neither "
                f"{os.path.join(root, 'test')} nor {os.path.join(root, 'val')} beside it; "
                f"expected {layouts(root)}"
            )
    elif "test" in sub or "val" in sub:
        raise _not_found(
            f"imagefolder: {root} has {'test/' if 'test' in sub else 'val/'} but no train/; "
            f"expected {layouts(root)}"
        )
    else:
        given = []

    scans = {}
    for p in given or [""]:
        scans[p] = _scan(base / p if p else base, p, root)
    classes = scans[given[0] if given else ""][0]
    for p, (cls, *_rest) in scans.items():
        if cls != classes:
            ref = os.path.join(root, given[0])
            here = os.path.join(root, p)
            missing = [c for c in classes if c not in cls]
            extra = [c for c in cls if c not in classes]
            what = []
            if missing:
                what.append(f"class(es) {missing} of {ref} are missing from {here}")
            if extra:
                what.append(f"class(es) {extra} of {here} are missing from {ref}")
            raise _not_found(
                f"imagefolder: {'; '.join(what)}. Every split needs the same class folders "
                "(add the missing ones with their images, or remove the extra ones)"
            )

    rels, labels, stats, ignored, span = [], [], [], [], {}
    for p, (_cls, entries, st, ign) in scans.items():
        span[p] = (len(rels), len(rels) + len(entries))
        rels += [r for r, _ in entries]
        labels += [k for _, k in entries]
        stats += st
        ignored += ign
    if ignored:
        shown = ", ".join(ignored[:10]) + (
            f", ... ({len(ignored)} in all)" if len(ignored) > 10 else ""
        )
        warnings.warn(
            f"imagefolder: {len(ignored)} file(s) under {root} are not images in class folders "
            f"and were not loaded: {shown}",
            stacklevel=2,
        )
    labels_t = torch.tensor(labels, dtype=torch.int64)
    images = _cached_decode(base, rels, stats, size)

    def part(p: str) -> Tensor:
        a, b = span[p]
        return torch.arange(a, b)

    def split(idx: Tensor, fraction: float) -> tuple[Tensor, Tensor]:
        held, rest = _hold_out(labels_t[idx], fraction, SPLIT_SEED)
        return idx[held], idx[rest]

    pct = f"{VAL_FRACTION:.0%}"
    if not given:
        test, rest = split(part(""), TEST_FRACTION)
        val, train = split(rest, VAL_FRACTION)
        layout = (
            f"class folders under {root}, split per class with seed {SPLIT_SEED}: "
            f"{len(train)} train / {len(val)} validation / {len(test)} test"
        )
    elif "val" in given and "test" in given:
        train, val, test = part("train"), part("val"), part("test")
        layout = f"{root}/train, {root}/val, {root}/test"
    else:
        other = "test" if "test" in given else "val"
        val, train = split(part("train"), VAL_FRACTION)
        test = part(other)
        layout = (
            f"train: {root}/train less {pct} of each class held out for validation (seed "
            f"{SPLIT_SEED}); test: {root}/{other}"
        )
    return FolderImages(
        images, labels_t, rels, classes, {"train": train, "val": val, "test": test}, layout
    )

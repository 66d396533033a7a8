"""Data sets through torchvision's own classes, on tiny files in the exact on-disk formats.

torchvision checks the MD5 of every CIFAR/STL-10 file against the official archives'. Our
tiny files cannot have those checksums, so each test points the class's checksum table
(``train_list``, ``test_list``, ``meta``: data, not code) at the MD5 of the files it wrote.
Everything else — ``_check_integrity`` computing and comparing the MD5s, the unpickling,
the reshapes — is torchvision's unchanged code; a corrupted file still fails the check
(tested below).
"""

import hashlib
import pickle

import numpy as np
import pytest
import torch
import torchvision

from experiments import DatasetNotFoundError, load_data, resolve_config
from experiments._data import EpochBatches, augment, augment_params

N_PER_BATCH = 10


def _md5(path):
    return hashlib.md5(path.read_bytes()).hexdigest()


def _pixels(n, seed):
    return np.random.default_rng(seed).integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)


def _write_cifar(root, monkeypatch, hundred=False):
    cls = torchvision.datasets.CIFAR100 if hundred else torchvision.datasets.CIFAR10
    folder = root / cls.base_folder
    folder.mkdir(parents=True)
    label_key = "fine_labels" if hundred else "labels"
    k = 100 if hundred else 10
    images = {}
    train_names = ["train"] if hundred else [f"data_batch_{i}" for i in range(1, 6)]
    test_names = ["test"] if hundred else ["test_batch"]
    n = 5 * N_PER_BATCH if hundred else N_PER_BATCH
    for i, name in enumerate(train_names + test_names):
        x = _pixels(n, i)
        labels = [int(v) for v in np.arange(n) % k]
        entry = {"data": x.reshape(n, -1), label_key: labels, "batch_label": name}
        with open(folder / name, "wb") as f:
            pickle.dump(entry, f)
        images[name] = (x, labels)
    meta_key = "fine_label_names" if hundred else "label_names"
    with open(folder / cls.meta["filename"], "wb") as f:
        pickle.dump({meta_key: [f"class{j}" for j in range(k)]}, f)
    monkeypatch.setattr(cls, "train_list", [[m, _md5(folder / m)] for m in train_names])
    monkeypatch.setattr(cls, "test_list", [[m, _md5(folder / m)] for m in test_names])
    meta = dict(cls.meta, md5=_md5(folder / cls.meta["filename"]))
    monkeypatch.setattr(cls, "meta", meta)
    return images, train_names, test_names


def _unnormalize(split, i):
    x, y = split[i]
    return (x * split.std + split.mean), y


def test_cifar10_layout_splits_and_pixels(tmp_path, monkeypatch):
    images, train_names, _ = _write_cifar(tmp_path, monkeypatch)
    cfg = resolve_config(dataset="cifar10", data_root=str(tmp_path), augment=False)
    data = load_data(cfg)
    # The paper's 40,000 / 10,000 split of 50,000 is 80 / 20: 40 / 10 of our 50.
    assert (len(data.train), len(data.val), len(data.test)) == (40, 10, 10)
    assert data.classes == [f"class{j}" for j in range(10)] and data.num_classes == 10
    all_train = np.concatenate([images[n][0] for n in train_names])
    all_labels = sum((images[n][1] for n in train_names), [])
    seen = set()
    for split in (data.train, data.val):
        for i in range(len(split)):
            j = split.indices[i]
            x, y = _unnormalize(split, i)
            # CIFAR's row of 3072 bytes is R plane, G plane, B plane, each row-major.
            want = torch.from_numpy(all_train[j]).float() / 255
            assert torch.allclose(x, want, atol=1e-5) and y == all_labels[j]
            seen.add(j)
    assert seen == set(range(50))  # the splits are disjoint and cover the training set
    x, y = _unnormalize(data.test, 3)
    assert torch.allclose(x, torch.from_numpy(images["test_batch"][0][3]).float() / 255, atol=1e-5)
    # Normalization statistics come from the training split only.
    train_px = all_train[data.train.indices].astype(np.float64) / 255
    assert torch.allclose(
        data.train.mean.flatten().double(), torch.tensor(train_px.mean((0, 2, 3)))
    )


def test_cifar100_loads_fine_labels(tmp_path, monkeypatch):
    images, *_ = _write_cifar(tmp_path, monkeypatch, hundred=True)
    data = load_data(resolve_config(dataset="cifar100", data_root=str(tmp_path)))
    assert data.num_classes == 100 and (len(data.train), len(data.val)) == (40, 10)
    j = data.val.indices[0]
    assert data.val[0][1] == images["train"][1][j]


def test_missing_and_corrupted_cifar_say_how_to_get_it(tmp_path, monkeypatch):
    cfg = resolve_config(dataset="cifar10", data_root=str(tmp_path))
    with pytest.raises(DatasetNotFoundError) as e:
        load_data(cfg)
    msg = str(e.value)
    assert "--download" in msg and "cifar-10-batches-py" in msg and str(tmp_path) in msg
    _write_cifar(tmp_path, monkeypatch)
    load_data(cfg)  # intact
    with open(tmp_path / "cifar-10-batches-py" / "data_batch_3", "r+b") as f:
        f.seek(200)
        f.write(b"\x00\x01\x02")
    with pytest.raises(DatasetNotFoundError, match="checksum"):
        load_data(cfg)


def test_stl10_binary_files(tmp_path, monkeypatch):
    cls = torchvision.datasets.STL10
    folder = tmp_path / cls.base_folder
    folder.mkdir()
    rng = np.random.default_rng(0)
    # STL-10 stores images column-major: (n, 3, 96, 96) with the last two axes as (w, h).
    train = rng.integers(0, 256, size=(10, 3, 96, 96), dtype=np.uint8)
    test = rng.integers(0, 256, size=(4, 3, 96, 96), dtype=np.uint8)
    train.tofile(folder / "train_X.bin")
    (np.arange(10, dtype=np.uint8) % 10 + 1).tofile(folder / "train_y.bin")  # 1-based
    test.tofile(folder / "test_X.bin")
    np.array([3, 1, 2, 10], dtype=np.uint8).tofile(folder / "test_y.bin")
    train[:2].tofile(folder / "unlabeled_X.bin")
    (folder / "class_names.txt").write_text("\n".join(f"c{j}" for j in range(10)) + "\n")
    monkeypatch.setattr(
        cls,
        "train_list",
        [[n, _md5(folder / n)] for n in ("train_X.bin", "train_y.bin", "unlabeled_X.bin")],
    )
    monkeypatch.setattr(
        cls, "test_list", [[n, _md5(folder / n)] for n in ("test_X.bin", "test_y.bin")]
    )
    data = load_data(resolve_config(dataset="stl10", data_root=str(tmp_path), augment=False))
    # The paper's 4,000 / 1,000 of 5,000 is 80 / 20.
    assert (len(data.train), len(data.val), len(data.test)) == (8, 2, 4)
    assert data.classes[0] == "c0" and data.image_size == 96
    x, y = _unnormalize(data.test, 3)
    assert y == 9  # label 10 on disk, 0-based here
    want = torch.from_numpy(test[3]).float().transpose(1, 2) / 255
    assert torch.allclose(x, want, atol=1e-5)


def test_augment_is_flip_pad_crop():
    x = torch.arange(3 * 32 * 32, dtype=torch.float32).view(3, 32, 32) + 1
    # A window of the zero-padded (pad 32/16 = 2) image, flipped or not.
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for flip in (False, True):
        for i in range(5):
            for j in range(5):
                want = (padded.flip(-1) if flip else padded)[:, i : i + 32, j : j + 32]
                assert torch.equal(augment(x, flip, i, j), want)
    assert torch.equal(augment(x, False, 2, 2), x)


def test_augment_params_are_uniform_and_a_function_of_seed_epoch_index():
    index = torch.arange(20_000)
    flip, rows, cols = augment_params(7, 3, index, pad=2)
    assert abs(flip.float().mean() - 0.5) < 0.02
    # Every one of the 25 crops about equally often (1/25 each; sd of a share ~0.0014).
    share = torch.bincount(rows * 5 + cols, minlength=25).float() / len(index)
    assert ((share - 0.04).abs() < 0.006).all()
    again = augment_params(7, 3, index.flip(0), pad=2)
    assert torch.equal(again[1], rows.flip(0)) and torch.equal(again[0], flip.flip(0))
    # Another epoch or seed: independent draws (a quarter of the flips agree by chance).
    for other in (augment_params(7, 4, index, 2), augment_params(8, 3, index, 2)):
        assert abs((other[0] == flip).float().mean() - 0.5) < 0.02
        assert abs((other[1] == rows).float().mean() - 0.2) < 0.02


def test_augmentation_depends_on_seed_epoch_index_only(tmp_path, monkeypatch):
    _write_cifar(tmp_path, monkeypatch)
    data = load_data(resolve_config(dataset="cifar10", data_root=str(tmp_path), seed=3))
    a = torch.stack([data.train[i][0] for i in range(10)])
    torch.manual_seed(123)  # the global RNG plays no part
    assert torch.equal(a, torch.stack([data.train[i][0] for i in range(10)]))
    data.train.set_epoch(1)
    # Each item has 50 outcomes (flip x 25 crops): ten equal ones would be chance 50^-10.
    assert not torch.equal(a, torch.stack([data.train[i][0] for i in range(10)]))


def test_epoch_batches_split_evenly_and_resume():
    single = list(EpochBatches(100, 20, seed=1))
    assert sorted(sum(single, [])) == list(range(100))
    halves = [EpochBatches(100, 20, seed=1, rank=r, world=2) for r in range(2)]
    for b, (h0, h1) in enumerate(zip(*halves)):
        assert len(h0) == len(h1) == 10 and h0 + h1 == single[b]
    s = EpochBatches(100, 20, seed=1)
    s.set_epoch(0, start=3)
    assert list(s) == single[3:]
    s.set_epoch(1)
    assert list(s) != single
    # Several processes drop the incomplete last global batch; one process keeps it.
    assert len(list(EpochBatches(50, 20, 0))) == 3 and len(list(EpochBatches(50, 20, 0, 0, 2))) == 2
    with pytest.raises(ValueError, match="divisible"):
        EpochBatches(50, 15, 0, 0, 2)


def test_digits_split():
    data = load_data(resolve_config())
    assert (len(data.train), len(data.val), len(data.test)) == (1257, 180, 360)
    assert set(data.train.indices).isdisjoint(data.test.indices)
    half = load_data(resolve_config(train_fraction=0.5))
    assert len(half.train) == 628 and half.test.indices == data.test.indices

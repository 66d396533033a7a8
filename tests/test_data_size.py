"""The data-size experiment (the paper's Fig. 2): one run per network and fraction."""

import csv

from experiments.data_size import main


def test_data_size_runs_each_network_on_each_fraction(tmp_path, capsys):
    argv = ["--fractions", "0.1,0.2", "--archs", "parabolic,second_order", "--epochs", "1", "--widths", "8,16",
            "--out", str(tmp_path)]  # fmt: skip
    assert main(argv) == 0
    with open(tmp_path / "data_size.csv") as f:
        rows = list(csv.DictReader(f))
    got = [(r["arch"], float(r["fraction"]), int(r["train_images"])) for r in rows]
    # 10 % and 20 % of the 1,257 training digits; the test set stays whole.
    assert got == [("parabolic", 0.1, 126), ("parabolic", 0.2, 251),
                   ("second_order", 0.1, 126), ("second_order", 0.2, 251)]  # fmt: skip
    assert all(0 <= float(r["test_accuracy"]) <= 1 for r in rows)
    assert (tmp_path / "data_size.png").stat().st_size > 0
    assert (tmp_path / "second_order-0.2" / "report.json").exists()
    assert "second_order" in capsys.readouterr().out
    assert main(["--archs", "unet", "--out", str(tmp_path)]) == 2


def test_data_size_on_an_image_folder_uses_the_table1_cpu_recipe(tmp_path):
    import json

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 5), ("test", 2)):
        for k in range(10):
            (tmp_path / "data" / split / f"c{k}").mkdir(parents=True)
            for i in range(n):
                x = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
                Image.fromarray(x).save(tmp_path / "data" / split / f"c{k}" / f"{i}.png")
    out = tmp_path / "out"
    argv = ["--dataset", "imagefolder", "--data-root", str(tmp_path / "data"), "--fractions",
            "0.2,0.4", "--archs", "hamiltonian", "--widths", "4,8", "--threads", "1",
            "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    with open(out / "data_size.csv") as f:
        rows = list(csv.DictReader(f))
    # 40 of the 50 training images are the training split (10 are validation).
    assert [(r["arch"], int(r["train_images"])) for r in rows] == [("hamiltonian", 8),
                                                                  ("hamiltonian", 16)]  # fmt: skip
    cfg = json.loads((out / "hamiltonian-0.4" / "config.json").read_text())
    assert (cfg["augment"], cfg["batch_size"], cfg["bn_eps"], cfg["clip_weights"]) == (
        False, 125, 1e-4, True)  # fmt: skip
    assert cfg["lr_schedule"] == [[2, 0.1]] and cfg["widths"] == [4, 8]
    # Table 1's cosine decay, without compilation (twelve short runs).
    assert cfg["lr_decay"] == "cosine" and cfg["compile"] is False
    assert (cfg["smoothness"], cfg["weight_decay"], cfg["train_fraction"]) == (2e-4, 2e-4, 0.4)

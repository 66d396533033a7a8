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

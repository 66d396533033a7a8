"""experiments.stability: the growth measure, FGSM, and a tiny end-to-end run."""

import csv
import math

import pytest
import torch
import torch.nn.functional as F

import neuralpde
from experiments import stability as exp


def test_growth_of_an_identity_stage_is_one_and_of_a_scaling_is_its_factor():
    torch.manual_seed(0)
    for arch in ("parabolic", "hamiltonian", "second_order", "resnet"):
        net = neuralpde.PDECNN(arch, 1, 3, (4, 4), steps=2)
        with torch.no_grad():
            for name, p in net.stages[0].named_parameters():
                if "weight" in name:
                    p.zero_()  # K = 0: the right-hand side vanishes, the stage is the identity
        y0 = torch.randn(5, 4, 6, 6)
        y1 = y0 + 1e-2 * torch.randn_like(y0)
        g = exp.growth(net.stages[0], y0, y1)
        assert g.shape == (5,) and torch.allclose(g, torch.ones(5), atol=1e-6), arch
    g = exp.growth(lambda y: 3.0 * y, y0, y1)
    assert torch.allclose(g, torch.full((5,), 3.0))


def test_fgsm_is_a_sign_step_that_raises_the_loss():
    torch.manual_seed(0)
    x, y, _, _ = exp.load_digits(n_train=64)
    net = neuralpde.PDECNN("parabolic", 1, 10, (4, 8), steps=1, step_size=0.5).eval()
    eps = 2.0**-10  # exact in float32
    delta = exp.fgsm(net, x, y, eps)
    assert set(delta.unique().tolist()) <= {-eps, 0.0, eps} and delta.abs().sum() > 0
    with torch.no_grad():
        assert F.cross_entropy(net(x + delta), y) > F.cross_entropy(net(x), y)


def test_tiny_run_writes_table_csv_and_plot(tmp_path, capsys):
    argv = ["--depths", "1", "2", "--epochs", "1", "--n-train", "64", "--n-test", "32"]
    rows = exp.main(argv + ["--width", "4", "--out", str(tmp_path)])
    assert [(r["arch"], r["steps"]) for r in rows] == [(a, n) for a in exp.ARCHS for n in (1, 2)]
    with open(tmp_path / "stability.csv") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 8 and tuple(table[0]) == exp.FIELDS
    for r in table:
        assert float(r["T"]) == pytest.approx(float(r["steps"]) * 0.1)
        for k in ("growth_random_median", "growth_fgsm_median"):
            assert 0 < float(r[k]) <= float(r[k.replace("median", "max")]) < math.inf
        within = float(r["steps_within_limit"])
        assert math.isnan(within) if r["arch"] == "resnet" else 0.0 <= within <= 1.0
    assert (tmp_path / "stability.png").stat().st_size > 10_000
    assert "growth_fgsm_median" in capsys.readouterr().out

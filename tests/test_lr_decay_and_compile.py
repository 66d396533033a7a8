"""The learning-rate decays (the paper's steps, cosine annealing) and ``--compile``."""

from __future__ import annotations

import math

import pytest

from experiments import fit, resolve_config
from experiments._config import ConfigError, lr_now

TINY = {"widths": [4, 8], "epochs": 2, "batch_size": 64, "stability_penalty": 0.0}


def test_step_decay_is_the_schedule_of_the_epoch():
    cfg = resolve_config(lr_schedule=[[1, 0.1], [2, 0.01]])
    assert [lr_now(cfg, e, b, 10) for e, b in ((0, 0), (0, 9), (1, 0), (2, 9))] == [
        0.1,
        0.1,
        0.01,
        0.01,
    ]


def test_cosine_decay_anneals_the_first_rate_to_zero_batch_by_batch():
    cfg = resolve_config(epochs=4, lr=0.2, lr_decay="cosine")
    assert cfg.lr_schedule == [[4, 0.2]]
    nb = 8
    rates = [lr_now(cfg, e, b, nb) for e in range(4) for b in range(nb)]
    assert rates[0] == 0.2
    assert rates[16] == pytest.approx(0.1)  # half-way: half the rate
    assert all(a > b for a, b in zip(rates, rates[1:]))  # strictly down, batch by batch
    s = (3 + 7 / 8) / 4  # the last batch
    assert rates[-1] == pytest.approx(0.1 * (1 + math.cos(math.pi * s))) and rates[-1] > 0
    # The recipe's first rate when no --lr is given.
    assert resolve_config(lr_decay="cosine").lr_schedule == [[12, 0.05]]


@pytest.mark.parametrize(
    "given, message",
    [
        ({"lr_decay": "cosine", "lr_schedule": [[1, 0.1], [1, 0.01]]}, "has 2 phases"),
        ({"lr_decay": "linear"}, "--lr-decay must be one of"),
    ],
)
def test_bad_decays_get_a_named_error(given, message):
    with pytest.raises(ConfigError, match=message):
        resolve_config(**given)


def test_cosine_run_logs_the_rate_of_each_epochs_start(tmp_path):
    cfg = resolve_config(**TINY, lr=0.1, lr_decay="cosine", out=str(tmp_path))
    fit(cfg, log=lambda *_: None)
    rates = [float(r.split(",")[1]) for r in (tmp_path / "metrics.csv").read_text().split()[1:]]
    assert rates == [pytest.approx(0.1), pytest.approx(0.05)]


@pytest.mark.slow
# The default network's rate bound runs eagerly (torch.compiler.disable) once per forward
# pass, before the network's graph: dynamo takes the cached kernels, tensors that are not
# leaves, as the graph's inputs, and warns from inside PyTorch when it reads their .grad.
@pytest.mark.filterwarnings("ignore:The .grad attribute of a Tensor that is not a leaf")
def test_compiled_training_matches_eager(tmp_path):
    """torch.compile (inductor) trains the same network as eager, to float rounding."""
    reports = {}
    for name, compile in (("eager", False), ("compiled", True)):
        cfg = resolve_config(**TINY, compile=compile, seed=3, out=str(tmp_path / name))
        reports[name] = fit(cfg, log=lambda *_: None)
    eager, compiled = reports["eager"], reports["compiled"]
    assert compiled["test_loss"] == pytest.approx(eager["test_loss"], rel=1e-3)
    assert abs(compiled["test_accuracy"] - eager["test_accuracy"]) <= 2 / 360
    assert eager["test_accuracy"] > 0.15  # it learned something (chance: 0.1 ± 0.016)

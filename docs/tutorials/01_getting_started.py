"""Tutorial 01: getting started — build a network, train it on digits, evaluate, save, load.

    python docs/tutorials/01_getting_started.py

``NEURALPDE_SMALL=1`` trains a tiny network for one epoch (seconds); figures go to
``$NEURALPDE_FIGURES`` (default: ``docs/tutorials/figures``).
"""

import os
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

import neuralpde  # noqa: E402
from experiments import (  # noqa: E402
    build_model,
    evaluate,
    fit,
    load_checkpoint,
    load_data,
    resolve_config,
)

SMALL = os.environ.get("NEURALPDE_SMALL") == "1"
FIGURES = Path(os.environ.get("NEURALPDE_FIGURES", Path(__file__).parent / "figures"))
FIGURES.mkdir(parents=True, exist_ok=True)
torch.manual_seed(0)

# %% 1. A network is a stack of ODE stages. Build one by hand and look at it.
net = neuralpde.PDECNN("parabolic", in_channels=1, num_classes=10, widths=(16, 32, 64))
print(net)
print(f"{neuralpde.count_parameters(net):,} parameters")
x = torch.randn(5, 1, 8, 8)
print("logits:", tuple(net(x).shape), "solver stats:", net.solver_stats())

# %% 2. Train it on scikit-learn's 8x8 digits: the same run as `python -m experiments.train`.
options = {"widths": [8, 16], "epochs": 1, "train_fraction": 0.3} if SMALL else {}
out = Path(tempfile.mkdtemp()) / "digits"
cfg = resolve_config(out=str(out), **options)
print(f"\ntraining {cfg.arch} widths {cfg.widths} for {cfg.epochs} epochs, lr {cfg.lr_schedule}")
report = fit(cfg)
print(f"test accuracy {report['test_accuracy']:.2%} in {report['seconds']:.1f} s")

# %% 3. Everything is in `out`: config, metrics per epoch, checkpoints, report, figures.
print(sorted(p.name for p in out.iterdir()))

# %% 4. Load the best weights into a fresh network and evaluate it again.
best = load_checkpoint(out / "best.pt")  # verified: a truncated file would raise
fresh = build_model(cfg, in_channels=1, num_classes=10)
fresh.load_state_dict(best["model"])
data = load_data(cfg)
again = evaluate(fresh, data.test, "cpu", outputs=True)
assert again["accuracy"] == report["test_accuracy"]
print(f"reloaded from best.pt (epoch {best['epoch']}): test accuracy {again['accuracy']:.2%}")

# %% 5. Save just the weights for use elsewhere, and load them back.
# The default network is stable by construction: build it the same way (bias normalization,
# kernels parametrized by the rate bound) before loading its weights.
torch.save(fresh.state_dict(), out / "weights.pt")
other = neuralpde.PDECNN(
    "parabolic", 1, 10, tuple(cfg.widths), rhs_options={"normalization": cfg.normalization}
)
neuralpde.stability.constrain(other, (1, 8, 8), fraction=cfg.rate_bound)
other.load_state_dict(torch.load(out / "weights.pt", weights_only=True))
other.eval()
with torch.no_grad():
    assert torch.equal(other(data.test[0][0][None]), fresh.eval()(data.test[0][0][None]))

# %% 6. Figures: learning curves, and class probabilities of a few test digits.
rows = load_checkpoint(out / "last.pt")["metrics"]  # every epoch
fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.2))
epochs = [r["epoch"] for r in rows]
a.plot(epochs, [r["train_loss"] for r in rows], "o-", label="training")
a.plot(epochs, [r["val_loss"] for r in rows], "s-", label="validation")
a.set(xlabel="epoch", ylabel="cross-entropy", yscale="log")
b.plot(epochs, [r["val_accuracy"] for r in rows], "s-", color="C1")
b.set(xlabel="epoch", ylabel="validation accuracy")
a.legend()
fig.tight_layout()
fig.savefig(FIGURES / "01_curves.png", dpi=110)

probs, labels = again["probs"], again["labels"]
# The four least confident test digits: where the network hesitates.
order = probs.max(1).values.argsort()[:4].tolist()
fig, axes = plt.subplots(2, 4, figsize=(8, 4))
for c, i in enumerate(order):
    img = data.test[i][0][0] * data.test.std[0] + data.test.mean[0]
    axes[0, c].imshow(img.numpy(), cmap="gray_r")
    axes[0, c].set_title(
        f"true {labels[i].item()}, predicted {probs[i].argmax().item()}", fontsize=8
    )
    axes[0, c].axis("off")
    axes[1, c].bar(
        range(10), probs[i].numpy(), color=["C2" if k == labels[i] else "C7" for k in range(10)]
    )
    axes[1, c].set(xticks=range(10), ylim=(0, 1))
fig.tight_layout()
fig.savefig(FIGURES / "01_probabilities.png", dpi=110)
print(f"figures in {FIGURES}")

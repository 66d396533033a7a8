"""The adaptive path: dopri5 at rtol 1e-3 against fixed-step rk4 at the accuracy it reaches.

A small parabolic PDECNN is trained on scikit-learn's 8x8 digits (forward Euler, h = 1,
the paper's scheme), then its test set is evaluated with dopri5 (rtol 1e-3, atol 1e-4,
jump times of θ(t) given) and with rk4 at halving steps. Accuracy of a discretization is
the largest difference of its logits from a reference solve (rk4, h = 1/32), relative to
the reference's largest logit. Reported: NFE per stage, seconds per test-set forward
(median of interleaved rounds), error and test accuracy; the rk4 row to compare with is
the coarsest step whose error is at most dopri5's.

    python benchmarks/adaptive.py [--tiny] [--repeats N] [--threads N]
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from _common import header, interleaved, median, parser, setup, table

import neuralpde


def digits(tiny: bool):
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(d.target)
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(y), generator=g)
    x, y = x[perm], y[perm]
    n_train = 200 if tiny else 1400
    n_test = 20 if tiny else len(y) - n_train
    return x[:n_train], y[:n_train], x[n_train : n_train + n_test], y[n_train : n_train + n_test]


def train(net, x, y, epochs: int) -> None:
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    g = torch.Generator().manual_seed(1)
    net.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(y), generator=g).split(32):
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(net(x[idx]), y[idx]).backward()
            opt.step()
            with torch.no_grad():  # the paper's weight clipping keeps h = 1 stable
                for stage in net.stages:
                    for p in stage.parameters():
                        p.clamp_(-1.0, 1.0)
    net.eval()


def main() -> None:
    args = parser(__doc__.splitlines()[0]).parse_args()
    setup(args)
    repeats = args.repeats or (2 if args.tiny else 7)
    header(__doc__.splitlines()[0])
    torch.manual_seed(0)
    x_tr, y_tr, x_te, y_te = digits(args.tiny)
    widths = (4, 4) if args.tiny else (16, 32, 32)
    net = neuralpde.PDECNN("parabolic", 1, 10, widths=widths)
    train(net, x_tr, y_tr, epochs=1 if args.tiny else 15)

    def evaluate(method, **kw):
        net.reset_solver()  # each configuration is a whole discretization
        net.set_solver(method, **kw)
        with torch.no_grad():
            logits = net(x_te)
        nfe = [s["nfe"] for s in net.solver_stats()]

        def run():
            with torch.no_grad():
                return net(x_te)

        return logits, nfe, run

    ref, _, _ = evaluate("rk4", step_size=1 / 4 if args.tiny else 1 / 32)
    scale = ref.abs().max()
    configs = [("dopri5", {"rtol": 1e-3, "atol": 1e-4})]
    steps = (1.0, 0.5) if args.tiny else (1.0, 0.5, 0.25, 0.125, 0.0625)
    configs += [("rk4", {"step_size": h}) for h in steps]
    configs.append(("euler", {"step_size": 1.0}))
    results, runs = [], {}
    for method, kw in configs:
        logits, nfe, run = evaluate(method, **kw)
        name = f"{method} " + ", ".join(f"{k}={v:g}" for k, v in kw.items())
        err = ((logits - ref).abs().max() / scale).item()
        acc = (logits.argmax(1) == y_te).float().mean().item()
        results.append((name, method, kw, nfe, err, acc))
        runs[name] = run
    # Time every configuration in the same interleaved rounds (re-setting its solver).
    timed = {}
    for name, method, kw, *_ in results:

        def timed_run(method=method, kw=kw, run=runs[name]):
            net.reset_solver()
            net.set_solver(method, **kw)
            return run()

        timed[name] = timed_run
    times = interleaved(timed, repeats)
    dopri_err = results[0][4]
    match = next((r[0] for r in results[1:] if r[1] == "rk4" and r[4] <= dopri_err), None)
    rows = [
        {
            "solver": name,
            "NFE per stage": "/".join(str(n) for n in nfe),
            "s per test forward": median(times[name]),
            "time / dopri5": median(times[name]) / median(times[results[0][0]]),
            "rel. logit error": err,
            "test acc": acc,
            "matches dopri5": "<-" if name == match else "",
        }
        for name, _, _, nfe, err, acc in results
    ]
    print(
        f"digits: {len(y_tr)} train / {len(y_te)} test images, widths {widths}, "
        f"reference rk4 h={1 / 4 if args.tiny else 1 / 32:g}, {repeats} interleaved rounds"
    )
    table(rows)
    if match is None:
        print("no rk4 step in the list reaches dopri5's error")


if __name__ == "__main__":
    main()

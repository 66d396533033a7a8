"""The odeint facade: torchdiffeq pass-through, stats, and clear errors."""

import pytest
import torch
import torchdiffeq

import solvers

pytestmark = pytest.mark.usefixtures("float64")


class Decay(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a = torch.nn.Parameter(torch.tensor([[-1.0, 0.5], [-0.5, -0.2]]))

    def forward(self, t, y):
        return y @ self.a.T + torch.sin(t)


Y0 = torch.tensor([[1.0, -1.0], [0.3, 0.2]], dtype=torch.float64)
T = torch.tensor([0.0, 0.7, 1.5], dtype=torch.float64)


@pytest.mark.parametrize(
    "method,kw",
    [
        ("euler", {"step_size": 0.1}),
        ("midpoint", {"step_size": 0.1}),
        ("rk4", {"step_size": 0.1}),
        ("dopri5", {"rtol": 1e-6, "atol": 1e-8}),
        ("bosh3", {}),
    ],
)
def test_equals_torchdiffeq(method, kw):
    f = Decay()
    ours = solvers.odeint(f, Y0, T, method=method, **kw)
    opts = {"step_size": kw["step_size"]} if "step_size" in kw else {}
    other = {k: v for k, v in kw.items() if k != "step_size"}
    if method in solvers._odeint.ADAPTIVE_METHODS:
        opts["max_num_steps"] = solvers._odeint.DEFAULT_MAX_NUM_STEPS
    theirs = torchdiffeq.odeint(f, Y0, T, method=method, options=opts, **other)
    assert torch.equal(ours, theirs)


def test_adjoint_equals_torchdiffeq_adjoint():
    f = Decay()
    ours = solvers.odeint(f, Y0, T, method="rk4", step_size=0.1, adjoint=True)
    ours.sum().backward()
    g_ours = f.a.grad.clone()
    f.a.grad = None
    theirs = torchdiffeq.odeint_adjoint(f, Y0, T, method="rk4", options={"step_size": 0.1})
    theirs.sum().backward()
    assert torch.equal(ours, theirs)
    assert torch.allclose(g_ours, f.a.grad)


def test_tuple_state_gives_tuple():
    def f(t, y):
        return (-y[1], y[0])

    q, p = solvers.odeint(f, (Y0[0], Y0[1]), T, method="rk4", step_size=0.05)
    assert q.shape == (3, 2) and p.shape == (3, 2)


def test_stats_fixed_and_adaptive():
    f = Decay()
    _, st = solvers.odeint(
        f, Y0, torch.tensor([0.0, 1.0]), method="rk4", step_size=0.25, return_stats=True
    )
    assert st == {"nfe": 16, "steps": 4}
    _, st = solvers.odeint(f, Y0, torch.tensor([0.0, 1.0]), method="dopri5", return_stats=True)
    assert st["steps"] > 0 and st["rejected"] >= 0
    # dopri5 is FSAL: 6 new evaluations per attempted step, plus 2 to pick the first step.
    assert st["nfe"] == 6 * (st["steps"] + st["rejected"]) + 2
    _, st = solvers.odeint(
        (lambda t, p: p, lambda t, q: -q),
        (Y0[0], Y0[1]),
        torch.tensor([0.0, 1.0]),
        method="verlet",
        step_size=0.1,
        return_stats=True,
    )
    assert st == {"nfe": 30, "steps": 10, "nfe_q": 10, "nfe_p": 20}


def test_symplectic_grid_divides_each_interval():
    _, st = solvers.odeint(
        (lambda t, p: p, lambda t, q: -q),
        (Y0[0], Y0[1]),
        torch.tensor([0.0, 3.0]),
        method="symplectic_euler",
        step_size=1.0,
        return_stats=True,
    )
    assert st["steps"] == 3
    _, st = solvers.odeint(
        (lambda t, p: p, lambda t, q: -q),
        (Y0[0], Y0[1]),
        torch.tensor([0.0, 1.0, 1.5]),
        method="verlet",
        step_size=0.3,
        return_stats=True,
    )
    assert st["steps"] == 4 + 2


def test_unknown_method_lists_valid_names():
    with pytest.raises(ValueError, match="unknown method 'rk5'.*dopri5.*verlet"):
        solvers.odeint(Decay(), Y0, T, method="rk5")


def test_symplectic_needs_split_state_and_pair_of_functions():
    with pytest.raises(TypeError, match="split state"):
        solvers.odeint((Decay(), Decay()), Y0, T, method="verlet", step_size=0.1)
    with pytest.raises(TypeError, match=r"\(f_q, f_p\)"):
        solvers.odeint(Decay(), (Y0, Y0), T, method="verlet", step_size=0.1)


def test_rk_method_rejects_pair_of_functions():
    with pytest.raises(TypeError, match="one function"):
        solvers.odeint((Decay(), Decay()), (Y0, Y0), T, method="rk4", step_size=0.1)


@pytest.mark.parametrize("method", ["euler", "rk4", "verlet", "leapfrog"])
def test_fixed_step_needs_step_size(method):
    func = (lambda t, p: p, lambda t, q: -q) if method in ("verlet", "leapfrog") else Decay()
    y0 = (Y0, Y0) if method in ("verlet", "leapfrog") else Y0
    with pytest.raises(ValueError, match="step_size"):
        solvers.odeint(func, y0, T, method=method)


def test_adaptive_rejects_step_size():
    with pytest.raises(ValueError, match="rtol/atol"):
        solvers.odeint(Decay(), Y0, T, method="dopri5", step_size=0.1)


@pytest.mark.parametrize("t", [[0.0, 1.0, 0.5], [0.0, 0.0, 1.0], [1.0]])
def test_non_monotone_t(t):
    with pytest.raises(ValueError, match="t must"):
        solvers.odeint(Decay(), Y0, torch.tensor(t), method="rk4", step_size=0.1)


def test_nan_in_symplectic_state_names_the_step_and_time():
    def f_p(t, q):
        # Finite until t = 0.5, then NaN: the error must name step 5 (t = 0.5 to 0.6).
        return torch.where(t > 0.5, torch.full_like(q, float("nan")), -q)

    with pytest.raises(solvers.NonFiniteError, match="step 5") as err:
        solvers.odeint(
            (lambda t, p: p, f_p),
            (Y0, Y0),
            torch.tensor([0.0, 1.0]),
            method="verlet",
            step_size=0.1,
        )
    assert err.value.step == 5 and abs(err.value.t - 0.5) < 1e-12


def test_nan_in_torchdiffeq_state_names_the_time():
    def f(t, y):
        return torch.where(t > 0.8, torch.full_like(y, float("inf")), -y)

    with pytest.raises(solvers.NonFiniteError, match="t=0.7 and t=1.5"):
        solvers.odeint(f, Y0, T, method="euler", step_size=0.1)


def test_nan_in_initial_state():
    with pytest.raises(solvers.NonFiniteError, match="NaN or Inf before the first step"):
        solvers.odeint(Decay(), torch.full((2,), float("nan")), T, method="rk4", step_size=0.1)


def test_too_many_steps_is_a_clear_error():
    with pytest.raises(solvers.SolverError, match="max_num_steps"):
        solvers.odeint(
            lambda t, y: -1e4 * y,
            Y0,
            torch.tensor([0.0, 10.0]),
            method="dopri5",
            options={"max_num_steps": 50},
        )


def test_underflow_is_a_clear_error():
    def blowup(t, y):
        return y**2

    with pytest.raises((solvers.SolverError, solvers.NonFiniteError)):
        solvers.odeint(blowup, torch.ones(1), torch.tensor([0.0, 2.0]), method="dopri5")


def test_solvers_import_without_neuralpde():
    import subprocess
    import sys

    code = "import sys, solvers; assert 'neuralpde' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_on_failure_return_gives_partial_solution_and_status():
    t = torch.tensor([0.0, 1.0, 2.0, 3.0])

    def f_p(t, q):
        return torch.where(t > 1.5, torch.full_like(q, float("nan")), -q)

    (q, p), st = solvers.odeint(
        (lambda t, p: p, f_p),
        (Y0[0], Y0[1]),
        t,
        method="verlet",
        step_size=0.1,
        on_failure="return",
    )
    assert st["status"] == "nonfinite" and st["t_reached"] == 1.0 and "t=1.5" in st["message"]
    assert torch.isfinite(q[:2]).all() and torch.isnan(q[2:]).all()
    # The part before the failure equals an ordinary solve.
    ref = solvers.odeint(
        (lambda t, p: p, f_p), (Y0[0], Y0[1]), t[:2], method="verlet", step_size=0.1
    )
    assert torch.equal(q[1], ref[0][-1])

    y, st = solvers.odeint(
        lambda t, y: -1e4 * y,
        Y0,
        torch.tensor([0.0, 1e-3, 1.0]),
        method="dopri5",
        options={"max_num_steps": 30},
        on_failure="return",
    )
    assert st["status"] == "max_num_steps" and "max_num_steps" in st["message"]
    assert torch.isnan(y[-1]).all() and torch.equal(y[0], Y0)

    y, st = solvers.odeint(Decay(), Y0, T, method="rk4", step_size=0.1, on_failure="return")
    assert st["status"] == "ok" and st["t_reached"] == 1.5
    assert torch.allclose(y, solvers.odeint(Decay(), Y0, T, method="rk4", step_size=0.1))


def test_float32_times_do_not_add_a_step():
    # float32(6.4) is 6.4000001: still 64 steps of 0.1, not 65.
    _, st = solvers.odeint(
        (lambda t, p: p, lambda t, q: -q),
        (Y0[0], Y0[1]),
        torch.tensor([0.0, 6.4], dtype=torch.float32),
        method="verlet",
        step_size=0.1,
        return_stats=True,
    )
    assert st["steps"] == 64
    _, st = solvers.odeint(
        (lambda t, p: p, lambda t, q: -q),
        (Y0[0], Y0[1]),
        torch.tensor([0.0, 0.1], dtype=torch.float32),
        method="leapfrog",
        step_size=0.05,
        return_stats=True,
    )
    assert st["steps"] == 2


def _pair():
    return (lambda t, p: p, lambda t, q: -q * (1 + 0.1 * t)), (Y0, 0.5 * Y0)


@pytest.mark.parametrize(
    "method,kw,state",
    [
        ("euler", {"step_size": 0.1}, "single"),
        ("rk4", {"step_size": 0.3}, "tuple"),  # 0.3 does not divide 0.7: interpolated outputs
        ("explicit_adams", {"step_size": 0.1}, "single"),
        ("dopri5", {"rtol": 1e-6, "atol": 1e-8}, "single"),
        ("verlet", {"step_size": 0.1}, "split"),
        ("leapfrog", {"step_size": 0.1, "memory": "reversible"}, "split"),
    ],
)
@pytest.mark.parametrize("on_failure", ["raise", "return"])
def test_final_only_is_the_last_output_bit_for_bit(method, kw, state, on_failure):
    if state == "single":
        func, y0 = Decay(), Y0
    elif state == "tuple":
        f = Decay()
        func, y0 = (lambda t, y: (f(t, y[0]), -y[1])), (Y0, 2 * Y0)
    else:
        func, y0 = _pair()
    full = solvers.odeint(func, y0, T, method=method, on_failure=on_failure, **kw)
    last = solvers.odeint(func, y0, T, method=method, on_failure=on_failure, final_only=True, **kw)
    if on_failure == "return":
        (full, _), (last, stats) = full, last
        assert stats["status"] == "ok"
    if isinstance(full, tuple):
        assert isinstance(last, tuple) and len(last) == len(full)
        for a, b in zip(full, last):
            assert b.shape == a.shape[1:] and torch.equal(a[-1], b)
    else:
        assert last.shape == full.shape[1:] and torch.equal(full[-1], last)


def test_final_only_gradients_equal_the_stacked_ones():
    f = Decay()
    y0 = Y0.clone().requires_grad_()
    g_full = torch.autograd.grad(
        solvers.odeint(f, y0, T, method="rk4", step_size=0.1)[-1].square().sum(), (y0, f.a)
    )
    g_last = torch.autograd.grad(
        solvers.odeint(f, y0, T, method="rk4", step_size=0.1, final_only=True).square().sum(),
        (y0, f.a),
    )
    for a, b in zip(g_full, g_last):
        assert torch.equal(a, b)


def test_final_only_builds_no_stacked_output(graph_ops):
    """The reason for final_only: no copy of the states and no scatter of the gradient."""
    f = Decay()
    y0 = Y0.clone().requires_grad_()
    funcs, pair = _pair()
    pair = tuple(x.clone().requires_grad_() for x in pair)
    outs = [
        solvers.odeint(f, y0, T, method="euler", step_size=0.1, final_only=True),
        *solvers.odeint(funcs, pair, T, method="verlet", step_size=0.1, final_only=True),
    ]
    stacked = solvers.odeint(f, y0, T, method="euler", step_size=0.1)[-1]
    assert {"StackBackward0", "SelectBackward0"} <= graph_ops(stacked)  # the control
    for out in outs:
        assert not {"StackBackward0", "SelectBackward0"} & graph_ops(out)


def test_final_only_nonfinite_is_still_located():
    def f_p(t, q):
        return torch.where(t > 0.5, torch.full_like(q, float("nan")), -q)

    with pytest.raises(solvers.NonFiniteError, match="step 5") as err:
        solvers.odeint(
            (lambda t, p: p, f_p), (Y0, Y0), T, method="verlet", step_size=0.1, final_only=True
        )
    assert err.value.step == 5
    with pytest.raises(solvers.NonFiniteError, match="between t=0.0 and t=1.5"):
        solvers.odeint(
            lambda t, y: torch.where(t > 0.8, torch.full_like(y, float("inf")), -y),
            Y0,
            T,
            method="euler",
            step_size=0.1,
            final_only=True,
        )

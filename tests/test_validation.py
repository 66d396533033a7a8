"""Bad input at every public entry point: a clear error naming the argument and the fix."""

import pytest
import torch

import neuralpde
import solvers

X = torch.randn(2, 3, 8, 8)
T01 = torch.tensor([0.0, 1.0])


def split_func():
    return (lambda t, p: p, lambda t, q: -q)


CASES = [
    # (callable, exception type, regex the message must match)
    (lambda: neuralpde.SymmetricLayer(0), ValueError, "channels must be a positive int, got 0"),
    (lambda: neuralpde.SymmetricLayer("a"), ValueError, "channels must be a positive int"),
    (lambda: neuralpde.ResNetLayer(True), ValueError, "channels must be a positive int"),
    (
        lambda: neuralpde.SymmetricLayer(3)(torch.randn(2, 4, 5, 5)),
        ValueError,
        r"input must have shape \(batch, 3, height, width\), got \(2, 4, 5, 5\)",
    ),
    (
        lambda: neuralpde.ParabolicRHS(3)(torch.tensor(0.0), torch.randn(2, 4, 5, 5)),
        ValueError,
        r"y must have shape \(batch, 3, height, width\)",
    ),
    (
        lambda: neuralpde.ParabolicRHS(3)(torch.tensor(0.0), torch.randn(3, 5, 5)),
        ValueError,
        r"got \(3, 5, 5\)",
    ),
    (lambda: neuralpde.ResNetRHS(3)(torch.tensor(0.0), [1, 2]), TypeError, "must be a tensor"),
    (
        lambda: neuralpde.HamiltonianRHS(4)(torch.tensor(0.0), torch.randn(2, 4, 5, 5)),
        TypeError,
        r"tuple \(q, p\).*to_state",
    ),
    (
        lambda: neuralpde.HamiltonianRHS(4)(torch.tensor(0.0), (torch.randn(2, 4, 5, 5),) * 2),
        ValueError,
        r"q must have shape \(batch, 2, height, width\)",
    ),
    (
        lambda: neuralpde.SecondOrderRHS(4).to_state(torch.randn(2, 3, 5, 5)),
        ValueError,
        r"x must have shape \(batch, 4",
    ),
    (lambda: neuralpde.HamiltonianRHS(5), ValueError, "even"),
    (lambda: neuralpde.ParabolicRHS(3, steps=0), ValueError, "steps must be a positive int, got 0"),
    (lambda: neuralpde.ParabolicRHS(3, steps=2.0), ValueError, "steps must be a positive int"),
    (lambda: neuralpde.ParabolicRHS(3, step_size=-1), ValueError, "step_size must be a positive"),
    (lambda: neuralpde.ParabolicRHS(3, step_size=float("nan")), ValueError, "step_size"),
    (
        lambda: neuralpde.ParabolicRHS(3, interpolation="cubic"),
        ValueError,
        r"interpolation must be one of \('constant', 'linear'\), got 'cubic'",
    ),
    (
        lambda: neuralpde.ParabolicRHS(3, steps=1, interpolation="linear"),
        ValueError,
        "'linear' interpolation needs more knots",
    ),
    (lambda: neuralpde.TimeWeights({"a": [1, 2]}, 1.0), TypeError, r"params\['a'\] must be"),
    (lambda: neuralpde.TimeWeights({}, 1.0), TypeError, "non-empty dict"),
    (
        lambda: neuralpde.TimeWeights({"a": torch.ones(2), "b": torch.ones(3)}, 1.0),
        ValueError,
        "same number of time knots",
    ),
    (lambda: neuralpde.TimeWeights({"a": torch.ones(2)}, 0.0), ValueError, "T must be positive"),
    (lambda: neuralpde.Stage(torch.nn.Linear(2, 2)), TypeError, "neuralpde right-hand side"),
    (lambda: neuralpde.PDECNN("elliptic", 3, 10, (4, 4)), ValueError, "unknown arch 'elliptic'"),
    (lambda: neuralpde.PDECNN("parabolic", 0, 10, (4, 4)), ValueError, "in_channels"),
    (lambda: neuralpde.PDECNN("parabolic", 3, -1, (4, 4)), ValueError, "num_classes"),
    (lambda: neuralpde.PDECNN("parabolic", 3, 10, (4,)), ValueError, "at least two"),
    (lambda: neuralpde.PDECNN("parabolic", 3, 10, "abc"), ValueError, "widths"),
    (lambda: neuralpde.PDECNN("hamiltonian", 3, 10, (5, 8)), ValueError, "even"),
    (
        lambda: neuralpde.PDECNN("parabolic", 3, 10, (4, 4))(torch.randn(2, 3, 8, 8).double()),
        TypeError,
        r"input dtype torch.float64 differs.*net.to",
    ),
    (
        lambda: neuralpde.PDECNN("parabolic", 3, 10, (4, 4))(
            torch.zeros(2, 3, 8, 8, dtype=torch.long)
        ),
        TypeError,
        "floating point",
    ),
    (
        lambda: neuralpde.PDECNN("parabolic", 3, 10, (4, 4, 4))(torch.randn(2, 3, 7, 7)),
        ValueError,
        r"divisible by 2.*got 7×7; pad or crop",
    ),
    (lambda: neuralpde.PDECNN("parabolic", 3, 10, (4, 4))([1.0]), TypeError, "expected a tensor"),
    (
        lambda: neuralpde.PDECNN("parabolic", 3, 10, (4, 4))(torch.randn(3, 8, 8)),
        ValueError,
        r"expected input \(batch, 3, height, width\)",
    ),
    (lambda: neuralpde.PDECNN.from_paper("mnist", "parabolic"), ValueError, "unknown preset"),
    (
        lambda: neuralpde.PDECNN("parabolic", 3, 10, (4, 4)).set_solver("verlet"),
        ValueError,
        "needs a split",
    ),
    (
        lambda: neuralpde.PDECNN("parabolic", 3, 10, (4, 4)).set_solver("euler", step_size="a"),
        TypeError,
        "step_size must be a Python float",
    ),
    (
        lambda: neuralpde.PDECNN("parabolic", 3, 10, (4, 4)).set_solver("euler", step_size=-1.0),
        ValueError,
        "step_size must be a positive finite number",
    ),
    (
        lambda: neuralpde.PDECNN("parabolic", 3, 10, (4, 4)).set_solver("rk4", stage=3),
        ValueError,
        r"stage must be an int in \[0, 1\)",
    ),
    (
        lambda: neuralpde.PDECNN("hamiltonian", 3, 10, (4, 4)).set_solver("verlet", rtol=1e-3),
        ValueError,
        "rtol/atol apply to adaptive methods only",
    ),
    (
        lambda: neuralpde.PDECNN("hamiltonian", 3, 10, (4, 4)).set_solver("verlet", jump_t=[1.0]),
        ValueError,
        "takes no options",
    ),
    (
        lambda: solvers.odeint(lambda t, y: -y, torch.ones(2), T01, method="rk45"),
        ValueError,
        "unknown method 'rk45'; valid methods are: .*dopri5",
    ),
    (lambda: solvers.Solver(None), ValueError, "unknown method None"),
    (
        lambda: solvers.solve(
            lambda t, y: -y, torch.ones(2, dtype=torch.long), T01, solvers.Solver("rk4")
        ),
        TypeError,
        "y0 must be floating point",
    ),
    (
        lambda: solvers.solve(lambda t, y: -y, [1.0], T01, solvers.Solver("rk4")),
        TypeError,
        "y0 must be a tensor",
    ),
    (
        lambda: solvers.odeint(lambda t, y: -y, torch.ones(2), torch.tensor([0, 1])),
        TypeError,
        "t must be a floating-point tensor",
    ),
    (
        lambda: solvers.odeint(lambda t, y: -y, torch.ones(2), torch.tensor([0.0, float("inf")])),
        ValueError,
        "t must be finite",
    ),
    (
        lambda: solvers.odeint(lambda t, y: -y, torch.ones(2), torch.tensor([[0.0, 1.0]])),
        ValueError,
        "1-d",
    ),
    (
        lambda: solvers.odeint(lambda t, y: -y, torch.ones(2), torch.tensor([0.0, 1.0, 0.5])),
        ValueError,
        "strictly increasing",
    ),
    (
        lambda: solvers.solve(lambda t, y: -y, torch.ones(2), T01, "rk4"),
        TypeError,
        "solver must be a solvers.Solver",
    ),
    (
        lambda: solvers.Solver("dopri5", step_size=0.1),
        ValueError,
        "step_size=0.1 is for fixed-step methods",
    ),
    (
        lambda: solvers.odeint(
            lambda t, y: -y, torch.ones(2), T01, method="dopri5", options={"step_size": 0.1}
        ),
        ValueError,
        "is for fixed-step methods",
    ),
    (
        lambda: solvers.Solver("rk4", step_size=0.1).replace(method="dopri5"),
        ValueError,
        r"replace\(method='dopri5'\) keeps step_size=0.1.*pass step_size=None",
    ),
    (
        lambda: solvers.Solver("rk4").replace(steps=3),
        TypeError,
        "Solver has no settings",
    ),
    (lambda: solvers.Solver("verlet", step_size=-0.1), ValueError, "step_size must be a positive"),
    (
        lambda: solvers.Solver("verlet", step_size=torch.tensor(0.1)),
        TypeError,
        "Python float",
    ),
    (
        lambda: solvers.Solver("rk4", options={"step_size": 0.1}),
        ValueError,
        r"Solver\(step_size=...\), not in options",
    ),
    (lambda: solvers.Solver("rk4", rtol=float("nan")), ValueError, "rtol must be a positive"),
    (
        lambda: solvers.Solver("dopri5", atol=torch.tensor([1e-6, -1.0])),
        ValueError,
        "atol must be positive and finite in every entry",
    ),
    (
        # torchdiffeq's per-part tolerances of a tuple state: named, with the way out.
        lambda: solvers.odeint(
            lambda t, s: (-s[0], -2 * s[1]),
            (torch.ones(1), torch.ones(2)),
            torch.tensor([0.0, 1.0]),
            rtol=[1e-6, 1e-7],
        ),
        ValueError,
        "per-part tolerances of a tuple state are not supported",
    ),
    (
        lambda: solvers.odeint(
            lambda t, y: -1j * y,
            torch.ones(2, dtype=torch.complex128),
            torch.tensor([0.0, 1.0], dtype=torch.float64),
        ),
        TypeError,
        "torch.view_as_real",
    ),
    (lambda: solvers.Solver("rk4", options=[1]), TypeError, "options must be a dict"),
    (
        lambda: solvers.Solver("rk4", backward={"method": "rk4"}),
        ValueError,
        "backward= sets the adjoint solve and needs memory='adjoint'",
    ),
    (
        lambda: solvers.Solver("rk4", memory="adjoint", backward={"step": 1}),
        ValueError,
        "backward takes keys",
    ),
    (
        lambda: solvers.Solver("rk4", memory="adjoint", backward={"options": {"step_size": 0.1}}),
        ValueError,
        r"backward=\{'step_size': h\}, not in its options",
    ),
    (
        lambda: solvers.Solver("dopri5", memory="adjoint", backward={"step_size": 0.1}),
        ValueError,
        "is for a fixed-step backward method, and 'dopri5' chooses its own steps",
    ),
    (
        # The backward's list is torchdiffeq's methods: the steppers are not among them.
        lambda: solvers.Solver("rk4", memory="adjoint", backward={"method": "rk5"}),
        ValueError,
        r"backward method 'rk5' is not a torchdiffeq method; .* takes one of: adaptive_heun, "
        r"bosh3, dopri5, dopri8, euler, explicit_adams, fehlberg2, heun2, heun3, implicit_adams, "
        r"midpoint, rk4, scipy_solver$",
    ),
    (
        lambda: solvers.Solver("rk4", memory="adjoint", backward={"method": "verlet"}),
        ValueError,
        "backward method 'verlet' is not a torchdiffeq method",
    ),
    (
        lambda: solvers.solve(
            lambda t, y: -y,
            torch.ones(2),
            T01,
            solvers.Solver(
                "dopri5",
                memory="adjoint",
                backward={"method": "scipy_solver", "options": {"solver": "XX"}},
            ),
            params=(),
        ),
        ValueError,
        r"^Solver.backward options: scipy_solver: options\['solver'\] must be one of",
    ),
    (
        lambda: solvers.Solver("rk4", memory="adjoint", backward={"step_size": -1.0}),
        ValueError,
        "backward step_size must be a positive finite number",
    ),
    (
        lambda: solvers.solve(split_func(), torch.ones(2), T01, solvers.Solver("verlet")),
        TypeError,
        "split state",
    ),
    (
        lambda: solvers.solve(
            lambda t, y: -y, (torch.ones(2), torch.ones(2)), T01, solvers.Solver("verlet")
        ),
        TypeError,
        r"func=\(f_q, f_p\)",
    ),
    (
        lambda: solvers.Solver("leapfrog", step_size=0.1, options={"a": 1}),
        ValueError,
        "takes no options",
    ),
    # torchdiffeq would warn at solve time and drop a misspelt option: refused up front,
    # for every kind of torchdiffeq method and for the adjoint's backward solve.
    (
        lambda: solvers.Solver("dopri5", options={"max_num_step": 10}),
        ValueError,
        r"method 'dopri5' takes no options \['max_num_step'\]; its options are \[.*'max_num_steps'",
    ),
    (
        lambda: solvers.Solver("rk4", step_size=0.1, options={"max_num_steps": 10}),
        ValueError,
        r"'rk4' takes no options \['max_num_steps'\]; its options are \['grid_constructor'",
    ),
    # An error norm steers step-size control only: a fixed grid (the implicit Adams
    # corrector, which measures itself in the max norm, too) or scipy would drop it.
    (
        lambda: solvers.Solver("euler", step_size=0.1, options={"norm": torch.linalg.norm}),
        ValueError,
        r"'euler' takes no options \['norm'\]",
    ),
    (
        lambda: solvers.Solver("implicit_adams", step_size=0.1, options={"norm": torch.norm}),
        ValueError,
        r"'implicit_adams' takes no options \['norm'\]",
    ),
    (
        lambda: solvers.odeint(
            lambda t, y: -y, torch.ones(2), T01, method="scipy_solver", options={"norm": abs}
        ),
        ValueError,
        r"'scipy_solver' takes no options \['norm'\]",
    ),
    # odeint_adjoint's errors name its own argument, not Solver's backward=.
    (
        lambda: solvers.odeint_adjoint(
            lambda t, y: -y, torch.ones(2), T01, adjoint_params=(), adjoint_options={"a": 1}
        ),
        ValueError,
        r"^adjoint_options: method 'dopri5' takes no options \['a'\]",
    ),
    (
        lambda: solvers.odeint_adjoint(
            lambda t, y: -y, torch.ones(2), T01, adjoint_params=(), adjoint_options=[1]
        ),
        TypeError,
        r"^adjoint_options must be a dict",
    ),
    (
        lambda: solvers.Solver("scipy_solver", options={"method": "RK45"}),
        ValueError,
        r"'scipy_solver' takes no options \['method'\]; its options are \[.*'solver'\]",
    ),
    (
        lambda: solvers.Solver(
            "dopri5", memory="adjoint", backward={"method": "rk4", "options": {"perturbed": 1}}
        ),
        ValueError,
        r"backward options: method 'rk4' takes no options \['perturbed'\]",
    ),
    (
        lambda: solvers.Solver("dopri5", options={"first_step": 0.1}).replace(method="rk4"),
        ValueError,
        r"keeps step_size=None, memory='autograd', options=\{'first_step': 0.1\}: options: "
        r"method 'rk4' takes no options \['first_step'\]",
    ),
    (
        lambda: solvers.Solver("dopri5", memory="adjoint", backward={"options": [1]}),
        TypeError,
        "backward options must be a dict, got list",
    ),
    (
        lambda: solvers.odeint(
            lambda t, y: -y, torch.ones(2), T01, method="rk4", options={"stepsize": 0.1}
        ),
        ValueError,
        r"takes no options \['stepsize'\].*odeint takes options=\{'step_size': h\}",
    ),
    (
        lambda: solvers.odeint(lambda t, y: -y, torch.ones(2), T01, options={"firststep": 0.1}),
        ValueError,
        "takes no options",
    ),
    (
        lambda: solvers.solve(
            split_func(), (torch.ones(2), torch.ones(2)), T01, solvers.Solver("rk4")
        ),
        TypeError,
        "takes one function",
    ),
    (lambda: solvers.Solver("rk4", memory="fast"), ValueError, "memory must be one of"),
    (
        lambda: solvers.solve(
            lambda t, y: -y, torch.ones(2), T01, solvers.Solver("rk4"), save="last"
        ),
        ValueError,
        "save must be one of",
    ),
    (
        lambda: solvers.solve(
            lambda t, y: -y, torch.full((2,), float("nan")), T01, solvers.Solver("rk4")
        ),
        solvers.NonFiniteError,
        "NaN or Inf before the first step",
    ),
    (
        lambda: solvers.odeint(lambda t, y: -y.unsqueeze(-1), torch.ones(4), T01, method="euler"),
        ValueError,
        r"returned shape \(4, 1\) .* for a state of shape \(4,\)",
    ),
    (
        lambda: solvers.odeint(lambda t, y: -y[0], (torch.ones(4), torch.ones(5)), T01),
        TypeError,
        "must return a tuple of 2 tensors like the state, got Tensor",
    ),
    (
        lambda: solvers.odeint(
            lambda t, y: -y.double(), torch.ones(4), T01, method="rk4", options={"step_size": 0.5}
        ),
        ValueError,
        "dtype torch.float64 for a state of shape .* dtype torch.float32",
    ),
    (
        lambda: solvers.solve(
            split_func(),
            (torch.ones(2), torch.ones(2)),
            T01.clone().requires_grad_(),
            solvers.Solver("verlet", step_size=0.1),
        ),
        ValueError,
        "gradients with respect to t are not supported by the symplectic methods",
    ),
    (
        lambda: solvers.odeint(
            split_func(), (torch.ones(2), torch.ones(2)), T01, method="verlet", event_fn=len
        ),
        ValueError,
        "event_fn is supported by the torchdiffeq methods",
    ),
    (
        lambda: solvers.solve(
            lambda t, y: -y, torch.ones(2), T01, solvers.Solver("rk4", memory="adjoint")
        ),
        TypeError,
        "wrap it in a module, or pass the tensors as params=",
    ),
    (
        lambda: solvers.odeint_adjoint(torch.nn.Linear(2, 2).forward, torch.ones(2), T01),
        TypeError,
        "for this method of a Linear: params=tuple",
    ),
    (
        lambda: solvers.odeint_second_order(
            lambda t, y: -y, torch.ones(2), torch.ones(3), T01, step_size=0.1
        ),
        ValueError,
        "one shape",
    ),
    (
        lambda: solvers.odeint_second_order(
            lambda t, y: -y, torch.ones(2), torch.ones(2), T01, method="rk4", step_size=0.1
        ),
        ValueError,
        "'rk4' is not a symplectic method; valid methods are: leapfrog",
    ),
    (
        lambda: solvers.odeint_second_order(3, torch.ones(2), torch.ones(2), T01, step_size=0.1),
        TypeError,
        "f must be callable",
    ),
    (
        lambda: neuralpde.stability.report(neuralpde.PDECNN("parabolic", 3, 10, (4, 4)), (5,)),
        ValueError,
        "input_shape",
    ),
]


@pytest.mark.parametrize("case", range(len(CASES)))
def test_bad_input_gets_a_clear_error(case):
    call, exc, pattern = CASES[case]
    with pytest.raises(exc, match=pattern):
        call()


def test_number_of_bad_inputs_tried():
    # The closing report quotes this number; keep it honest.
    assert len(CASES) >= 60

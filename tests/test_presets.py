"""Parameter counts of the paper presets (Table 1 of Ruthotto & Haber 2020)."""

import pytest
import torch

import neuralpde

TABLE1 = {
    ("stl10", "parabolic"): 618_554,
    ("stl10", "hamiltonian"): 324_794,
    ("stl10", "second_order"): 618_554,
    ("cifar10", "parabolic"): 502_570,
    ("cifar10", "hamiltonian"): 264_106,
    ("cifar10", "second_order"): 502_570,
    ("cifar100", "parabolic"): 652_484,
    ("cifar100", "hamiltonian"): 362_180,
    ("cifar100", "second_order"): 652_484,
}

# The ResNet control is not in the paper; its layer K2 σ(N(K1 Y)) has 18nf² + 2nf numbers per
# step, so the count is the parabolic one plus 3 · 9 · Σ nf² over the stages.
RESNET = {"stl10": 1_206_074, "cifar10": 979_498, "cifar100": 1_233_092}


@pytest.mark.parametrize("dataset,arch", sorted(TABLE1))
def test_table1_parameter_counts(dataset, arch):
    net = neuralpde.PDECNN.from_paper(dataset, arch)
    assert neuralpde.count_parameters(net) == TABLE1[dataset, arch]


@pytest.mark.parametrize("dataset", sorted(RESNET))
def test_resnet_control_count(dataset):
    net = neuralpde.PDECNN.from_paper(dataset, "resnet")
    widths = neuralpde._network.PAPER_PRESETS[dataset]["widths"][:-1]
    extra = 3 * 9 * sum(w * w for w in widths)
    assert neuralpde.count_parameters(net) == RESNET[dataset]
    assert RESNET[dataset] == TABLE1[dataset, "parabolic"] + extra


@pytest.mark.parametrize(
    "arch,per_step",
    [
        ("parabolic", lambda nf: 9 * nf**2 + 2 * nf),
        ("second_order", lambda nf: 9 * nf**2 + 2 * nf),
        ("hamiltonian", lambda nf: 9 * nf**2 // 2 + 2 * nf),
        ("resnet", lambda nf: 18 * nf**2 + 2 * nf),
    ],
)
def test_parameters_per_step(arch, per_step):
    for nf in (4, 8, 16):
        for steps in (1, 3, 5):
            stage = neuralpde.PDECNN(arch, 3, 10, (nf, nf), steps=steps).stages[0]
            assert neuralpde.count_parameters(stage) == steps * per_step(nf)


def test_unknown_preset_and_arch():
    with pytest.raises(ValueError, match="unknown preset 'mnist'"):
        neuralpde.PDECNN.from_paper("mnist", "parabolic")
    with pytest.raises(ValueError, match="unknown arch 'elliptic'"):
        neuralpde.PDECNN.from_paper("cifar10", "elliptic")


def test_paper_presets_use_the_authors_batchnorm_eps():
    # The authors' code (Meganet's batch-norm layer) has a BatchNorm with ε = 1e-4 and a
    # running average factor of 0.9 (PyTorch's momentum 0.1); custom networks keep
    # PyTorch's 1e-5.
    for dataset in ("stl10", "cifar10", "cifar100"):
        bns = [m for m in neuralpde.PDECNN.from_paper(dataset, "parabolic").modules()
               if isinstance(m, torch.nn.BatchNorm2d)]  # fmt: skip
        assert len(bns) == len(neuralpde._network.PAPER_PRESETS[dataset]["widths"])
        assert {(m.eps, m.momentum) for m in bns} == {(1e-4, 0.1)}
    custom = neuralpde.PDECNN("parabolic", 3, 10, (8, 16))
    assert {m.eps for m in custom.modules() if isinstance(m, torch.nn.BatchNorm2d)} == {1e-5}
    own = neuralpde.PDECNN("hamiltonian", 3, 10, (8, 16), bn_eps=1e-3)
    assert {m.eps for m in own.modules() if isinstance(m, torch.nn.BatchNorm2d)} == {1e-3}
    assert neuralpde.PDECNN.from_paper("cifar10", "resnet", bn_eps=1e-5).opening[1].eps == 1e-5
    with pytest.raises(ValueError, match="bn_eps must be a positive float"):
        neuralpde.PDECNN("parabolic", 3, 10, (8, 16), bn_eps=0.0)


def test_batchnorm_eps_changes_eval_logits_the_way_spec_says():
    # The same weights with ε = 1e-4 and 1e-5 give different eval-mode logits (by ~1e-2 on
    # trained statistics); with equal ε they agree exactly.
    torch.manual_seed(0)
    a = neuralpde.PDECNN.from_paper("cifar10", "parabolic").eval()
    b = neuralpde.PDECNN.from_paper("cifar10", "parabolic", bn_eps=1e-5).eval()
    c = neuralpde.PDECNN.from_paper("cifar10", "parabolic").eval()
    for m in a.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_var.uniform_(1e-4, 1e-3)  # small variances: where ε matters
    b.load_state_dict(a.state_dict())
    c.load_state_dict(a.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(a(x), c(x))
        assert (a(x) - b(x)).abs().max() > 1e-3

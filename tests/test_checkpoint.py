"""Checkpoints: atomic writes; truncated, corrupted and foreign files are refused whole."""

import os

import pytest
import torch

import neuralpde
from experiments import CheckpointError, load_checkpoint, save_checkpoint
from experiments._checkpoint import check_state_dict


def _payload(seed=0):
    torch.manual_seed(seed)
    net = neuralpde.PDECNN("parabolic", 1, 10, (4, 8))
    return {"kind": "last", "model": net.state_dict(), "epoch": 3, "rng": [1, (2, 3)]}


def test_round_trip_is_exact(tmp_path):
    p = _payload()
    save_checkpoint(tmp_path / "a.pt", p)
    q = load_checkpoint(tmp_path / "a.pt")
    assert q["epoch"] == 3 and q["rng"] == [1, (2, 3)]
    assert all(torch.equal(p["model"][k], q["model"][k]) for k in p["model"])
    assert [f.name for f in tmp_path.iterdir()] == ["a.pt"]  # no temporary file left


@pytest.mark.parametrize("keep", [0.1, 0.5, 0.9, 0.999])
def test_truncated_checkpoint_is_refused(tmp_path, keep):
    save_checkpoint(tmp_path / "a.pt", _payload())
    data = (tmp_path / "a.pt").read_bytes()
    (tmp_path / "a.pt").write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(CheckpointError, match="truncated or corrupted"):
        load_checkpoint(tmp_path / "a.pt")


def test_foreign_files_are_refused(tmp_path):
    torch.save({"state_dict": _payload()["model"]}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a neuralpde checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    (tmp_path / "text.pt").write_text("hello")
    with pytest.raises(CheckpointError, match="unreadable"):
        load_checkpoint(tmp_path / "text.pt")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


def test_altered_contents_fail_the_digest(tmp_path):
    save_checkpoint(tmp_path / "a.pt", _payload())
    body = torch.load(tmp_path / "a.pt", weights_only=True)
    w = body["payload"]["model"]["stages.0.rhs.theta.weight"]
    w.view(-1)[17] += 1e-3  # a valid file whose numbers changed behind the digest
    torch.save(body, tmp_path / "a.pt")
    with pytest.raises(CheckpointError, match="do not match their digest"):
        load_checkpoint(tmp_path / "a.pt")


def test_a_failed_write_leaves_the_old_checkpoint(tmp_path, monkeypatch):
    save_checkpoint(tmp_path / "a.pt", _payload(0))
    before = (tmp_path / "a.pt").read_bytes()
    real_save = torch.save

    def dies_half_way(obj, f):
        real_save(obj, f)
        f.truncate(100)
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", dies_half_way)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tmp_path / "a.pt", _payload(1))
    assert (tmp_path / "a.pt").read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["a.pt"]


def test_weights_for_another_network_are_not_loaded_half(tmp_path):
    net = neuralpde.PDECNN("parabolic", 1, 10, (4, 8))
    other = neuralpde.PDECNN("parabolic", 1, 10, (4, 16)).state_dict()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(CheckpointError, match="shape mismatches"):
        check_state_dict(net, other, "x.pt")
    hamiltonian = neuralpde.PDECNN("hamiltonian", 1, 10, (4, 8)).state_dict()
    with pytest.raises(CheckpointError, match="missing"):
        check_state_dict(net, hamiltonian, "x.pt")
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())

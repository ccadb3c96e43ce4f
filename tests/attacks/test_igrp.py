"""IGRP through the one claim path (``relaxplug attack`` with a two-radius guarantee): exact on
linear models, never breaking a sound certificate, catching a false one, the command end to end."""

import json
import math

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import relaxplug as rp
from relaxplug.adapters import IGRP
from relaxplug.certifiers import CERTIFIERS
from relaxplug.attacks import AttackSettings, attack_guarantee
from relaxplug.attacks.report import attack_report
from relaxplug.attacks.soundness import cluster_data, train_briefly
from relaxplug.cli import main as cli_main

from ..adapters.test_igrp import GROUPS, certify_igrp_linear
from ..fakes import OverClaiming, blob_checkpoint


def _linear(seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 6)).double().eval()


def _exact(model, x, eps_in, eps_out):
    W, b = model[0].weight.tolist(), model[0].bias.tolist()
    rows = [certify_igrp_linear(W, b, x[i].tolist(), GROUPS, eps_in, eps_out, 2) for i in range(x.shape[0])]
    return (torch.tensor([r["m_in"] for r in rows], dtype=torch.float64),
            torch.tensor([r["m_out"] for r in rows], dtype=torch.float64))


def test_both_claims_break_exactly_where_a_linear_model_violates_them():
    model = _linear(seed=4)
    x = torch.randn(40, 5, dtype=torch.float64)
    guarantee = IGRP(GROUPS, 0.15, 0.5)
    result = attack_guarantee(model, x, None, guarantee, None, 2, AttackSettings(steps=60, restarts=1, targets=3))
    assert [(c.name, c.eps, len(c)) for c in result.claims] == [("in", 0.15, 40), ("out", 0.5, 40)]
    m_in, m_out = _exact(model, x, 0.15, 0.5)
    for worst, exact in zip(result.worst, (m_in, m_out)):
        assert (exact < -1e-3).any() and (exact > 1e-3).any()  # both outcomes occur
        assert ((exact < -1e-3) <= (worst <= 0)).all()  # every real violation is found
        assert not (worst[exact > 1e-9] <= 0).any()  # and none where there is none


def test_empirical_figures_bound_the_certified_ones_and_nothing_breaks():
    generator = torch.Generator().manual_seed(1)
    x, y, centres = cluster_data((6,), 6, 256, generator)
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(6, 32), rp.layers.MinMax(), nn.Linear(32, 32), rp.layers.MinMax(), nn.Linear(32, 6))
    train_briefly(model, x, y, 150)
    model.eval()
    test_x, test_y, _ = cluster_data((6,), 6, 48, generator, centres)
    guarantee = IGRP(GROUPS, 0.4 / 3, 0.4)
    record = attack_report(model, TensorDataset(test_x, test_y), guarantee, None, 2, "gloro",
                           AttackSettings(steps=25, restarts=1, autoattack_fast=True))
    assert record["broken"] == 0 and record["broken_claims"] == {"in": [], "out": []}
    assert 0 < record["vra"] < 1
    assert record["empirical_accuracy_in"] >= record["verified_accuracy_in"] > 0
    assert record["empirical_accuracy_out"] >= record["verified_accuracy_out"] > 0
    assert record["empirical_robust_accuracy"] >= record["vra"]
    assert record["gap"] == pytest.approx(record["empirical_robust_accuracy"] - record["vra"])
    cert = rp.certify(model, test_x, norm=2, certifier="gloro", guarantee=guarantee)
    assert record["attacked"] == int(cert.verified_in.sum() + cert.group_verified.sum())
    assert record["certified"] == int(cert.certified.sum())
    assert record["verified_accuracy_out"] == pytest.approx(cert.group_verified_correct(test_y).float().mean().item())
    assert record["radii"] == [pytest.approx(0.4 / 3), 0.4] and record["eps"] == 0.4
    assert 0 <= record["autoattack_accuracy"] <= 1 and record["autoattack_eps"] == pytest.approx(0.4 / 3)


def test_a_false_certificate_is_caught_exactly_where_the_definition_rejects_it(monkeypatch):
    monkeypatch.setitem(CERTIFIERS._entries, OverClaiming.name, OverClaiming)
    model = _linear(seed=5)
    x = torch.randn(40, 5, dtype=torch.float64)
    y = model(x).argmax(1)
    record = attack_report(model, (x, y), IGRP(GROUPS, 0.3, 0.9), None, 2.0, OverClaiming.name,
                           AttackSettings(steps=40, restarts=1, autoattack=False))
    m_in, m_out = _exact(model, x, 0.3, 0.9)
    assert record["certified"] == 40 and record["attacked"] == 80
    for broken, exact in ((record["broken_claims"]["in"], m_in), (record["broken_claims"]["out"], m_out)):
        found = set(broken)
        assert set((exact < -1e-3).nonzero().flatten().tolist()) <= found  # every false claim is caught
        assert found <= set((exact <= 1e-9).nonzero().flatten().tolist())  # and only false ones
        assert found
    assert record["broken_points"] == sorted(set(record["broken_claims"]["in"]) | set(record["broken_claims"]["out"]))


def test_radii_come_from_the_guarantee():
    model = _linear(seed=0)
    x = torch.randn(4, 5, dtype=torch.float64)
    data = TensorDataset(x, model(x).argmax(1))
    with pytest.raises(ValueError, match="carries its own radii"):
        attack_report(model, data, IGRP(GROUPS, 0.1, 0.2), 0.3, 2, None, AttackSettings(autoattack=False))
    with pytest.raises(ValueError, match="eps is required"):
        attack_report(model, data, "rtk:2", None, 2, None, AttackSettings(autoattack=False))


@pytest.fixture(params=[2.0])
def igrp_checkpoint(request, tmp_path, monkeypatch):
    """An IGRP checkpoint (groups, both radii) trained for the norm ``request.param``."""
    return blob_checkpoint(tmp_path, monkeypatch, 6, {
        "guarantee": "igrp:0.01,0.03", "sets": GROUPS, "eps": 0.03, "eps_in": 0.01, "norm": request.param,
    })


def _attack(checkpoint, out, *extra):
    return cli_main(["attack", "--checkpoint", str(checkpoint), "--steps", "20", "--restarts", "1", "--out", str(out),
                     "--device", "cpu", "--quiet", *extra])


def test_attack_command_on_an_igrp_checkpoint(igrp_checkpoint, tmp_path, capsys):
    code = _attack(igrp_checkpoint, tmp_path / "good", "--autoattack-fast")  # norm: the checkpoint's
    out = capsys.readouterr().out
    assert code == 0
    columns = ("verified_accuracy_in", "verified_accuracy_out", "empirical_accuracy_in", "empirical_accuracy_out", "vra")
    assert all(column in out.splitlines()[0] for column in columns)
    record = json.loads((tmp_path / "good" / "attack.json").read_text())
    assert record["radii"] == [0.01, 0.03] and record["eps"] == 0.03 and record["broken"] == 0
    assert record["guarantee"] == "igrp:0.01,0.03" and record["points"] == 24 and record["norm"] == "2"

    code = _attack(igrp_checkpoint, tmp_path / "bad", "--guarantee", "igrp:0,3;1,4,5;2@0.5,2.0", "--norm", "2",
                   "--certifier", OverClaiming.name, "--no-autoattack")
    out = capsys.readouterr().out
    assert code == 1 and "BROKEN" in out
    record = json.loads((tmp_path / "bad" / "attack.json").read_text())
    assert record["radii"] == [0.5, 2.0] and record["certified"] == 24 and record["broken"] > 0
    assert record["verified_accuracy_in"] == 1.0  # the lie claims every (correct) prediction


@pytest.mark.parametrize("igrp_checkpoint", [math.inf], indirect=True)
def test_attack_command_takes_the_checkpoint_norm(igrp_checkpoint, tmp_path):
    code = _attack(igrp_checkpoint, tmp_path, "--certifier", "none", "--steps", "10", "--restarts", "0", "--no-autoattack")
    record = json.loads((tmp_path / "attack.json").read_text())
    assert code == 0 and record["norm"] == "inf" and record["certifier"] == "-"
    _attack(igrp_checkpoint, tmp_path, "--certifier", "none", "--norm", "2", "--steps", "10", "--no-autoattack")
    assert json.loads((tmp_path / "attack.json").read_text())["norm"] == "2"  # an explicit --norm wins

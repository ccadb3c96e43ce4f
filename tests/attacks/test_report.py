"""Attacks against exact answers (linear models), fake certificates and the attack command."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import relaxplug as rp
from relaxplug.attacks import AttackSettings, attack_guarantee, check_certificates
from relaxplug.attacks.autoattack import autoattack_accuracy
from relaxplug.attacks.pgd import into_ball
from relaxplug.attacks.report import attack_report
from relaxplug.cli import main as cli_main

from ..brute_force import acceptable, ranked
from relaxplug.certifiers import CERTIFIERS

from ..fakes import OverClaiming, blob_checkpoint

GUARANTEES = [
    ("standard", "standard", {}),
    ("rtk:2", "rtk", {"K": 2}),
    ("rtk:3", "rtk", {"K": 3}),
    ("affinity:0,1,2;2,3", "affinity", {"sets": [[0, 1, 2], [2, 3]]}),
]


def _linear(n=5, d=4, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d, n)).double().eval()


def exact_radius(W, b, x, kind, dual_norm, K=1, sets=()):
    """Largest radius at which some acceptable top-k set is kept, from the definition:
    ``max_{acceptable k} min_{j in F^k, i not in F^k} (f_j - f_i) / ||w_j - w_i||_dual``."""
    n = len(W)
    logits = [sum(w * v for w, v in zip(W[c], x)) + b[c] for c in range(n)]
    order = ranked(logits)
    best = 0.0
    for k in range(1, n):
        top = order[:k]
        if not acceptable(kind, k, top, K, sets):
            continue
        radius = min(
            (logits[j] - logits[i]) / _norm([p - q for p, q in zip(W[j], W[i])], dual_norm)
            for j in top
            for i in range(n)
            if i not in top
        )
        best = max(best, radius)
    return best


def _norm(v, p):
    return sum(a * a for a in v) ** 0.5 if p == 2 else sum(abs(a) for a in v)


@pytest.mark.parametrize("norm, dual", [(2, 2), ("inf", 1)])
@pytest.mark.parametrize("name, kind, kwargs", GUARANTEES)
def test_attack_matches_exact_radius_of_linear_model(norm, dual, name, kind, kwargs):
    model = _linear()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(12, 4, generator=gen, dtype=torch.float64)
    W, b = model[0].weight.tolist(), model[0].bias.tolist()
    radii = [exact_radius(W, b, row.tolist(), kind, dual, **kwargs) for row in x]
    for index, radius in enumerate(radii):
        assert radius > 0
        point = x[index : index + 1]
        kept = attack_guarantee(model, point, None, name, 0.99 * radius, norm, AttackSettings(steps=40, restarts=2))
        assert int(kept.survived_k[0]) > 0, f"point {index}: a set of radius {radius} broken at 0.99 r"
        broken = attack_guarantee(model, point, None, name, 1.2 * radius, norm, AttackSettings(steps=40, restarts=2))
        assert int(broken.survived_k[0]) == 0, f"point {index}: no acceptable set broken at 1.2 r"
        assert all(bool((w <= 0).all()) for w in broken.worst)


def test_attack_batches_points_and_gloro_radius_agrees():
    model = _linear()
    x = torch.randn(40, 4, dtype=torch.float64)
    cert = rp.certify(model, x, 0.0, 2, "gloro", "rtk:2")  # exact radius for a linear model
    W, b = model[0].weight.tolist(), model[0].bias.tolist()
    for row, r in zip(x, cert.radius.tolist()):
        assert r == pytest.approx(exact_radius(W, b, row.tolist(), "rtk", 2, K=2), rel=1e-6)
    # one batched call per radius: every point is robust below its radius, none above
    result = attack_guarantee(model, x, model(x).argmax(1), "rtk:2", 0.0, 2)
    assert bool(result.robust.all()) and result.robust_accuracy() == 1.0
    (claim,) = result.claims  # one claim per acceptable (point, k): 40 points x k in {1, 2}
    assert len(claim) == 80 and result.worst[0].shape == (80,)
    small = float(cert.radius.min()) * 0.99
    kept = attack_guarantee(model, x, None, "rtk:2", small, 2, AttackSettings(steps=40))
    assert bool(kept.robust.all())
    assert bool((kept.classes.sum(1) == kept.survived_k).all())


def test_empirical_accuracy_bounds_vra():
    model = _linear()
    x = torch.randn(64, 4, dtype=torch.float64)
    y = torch.randint(0, 5, (64,))
    for name in ("standard", "rtk:3", "affinity:0,1,2;2,3"):
        cert = rp.certify(model, x, 0.3, 2, "gloro", name)
        result = attack_guarantee(model, x, y, name, 0.3, 2)
        assert result.robust_accuracy() >= cert.vra(y)
        # a sound certificate's set is never broken, and the surviving k is at least the certified k
        assert bool((result.survived_k >= cert.k).all())


def test_check_certificates_names_an_overclaiming_point():
    model = _linear()
    x = torch.randn(30, 4, dtype=torch.float64)
    eps = 0.4
    cert = rp.certify(model, x, eps, 2, "gloro", "standard")
    assert check_certificates(model, x, cert, settings=AttackSettings(steps=40)).points == []
    # hand-made lie: claim top-1 robustness at a point whose exact radius is below eps / 1.2
    W, b = model[0].weight.tolist(), model[0].bias.tolist()
    radii = [exact_radius(W, b, row.tolist(), "standard", 2) for row in x]
    liar = next(i for i, r in enumerate(radii) if r < eps / 1.2)
    certified = cert.certified.clone()
    certified[liar] = True
    k = cert.k.clone()
    k[liar] = 1
    classes = cert.classes.clone()
    classes[liar] = nn.functional.one_hot(cert.pred[liar], 5).bool()
    fake = replace(cert, certified=certified, k=k, classes=classes)
    assert check_certificates(model, x, fake, settings=AttackSettings(steps=40)) == {"set": [liar]}


def test_autoattack_wrapper_on_tiny_models():
    model = _linear().float()
    x = torch.randn(40, 4)
    y = model(x).argmax(1)
    eps = 0.3
    W, b = model[0].weight.tolist(), model[0].bias.tolist()
    radii = torch.tensor([exact_radius(W, b, row.tolist(), "standard", 2) for row in x])
    result = autoattack_accuracy(model, x, y, eps, 2, AttackSettings(autoattack_fast=True))
    assert result.attacks == ("apgd-ce", "apgd-t")
    # exact on a linear model: points with radius > eps survive, those below eps / 1.2 fall
    assert bool(result.robust[radii > eps * 1.001].all())
    assert not bool(result.robust[radii < eps / 1.2].any())
    assert float(result) == pytest.approx(float((radii > eps).float().mean()), abs=0.05)
    assert bool(((result.x_adv - x).flatten(1).norm(dim=1) <= eps * (1 + 1e-6)).all())
    # the standard ensemble, L-inf, on an image model (Square runs on (C, H, W) inputs)
    torch.manual_seed(0)
    image_model = nn.Sequential(nn.Flatten(), nn.Linear(12, 4)).eval()
    images = torch.rand(6, 3, 2, 2)
    labels = image_model(images).argmax(1)
    full = autoattack_accuracy(image_model, images, labels, 0.05, "inf", box=(0.0, 1.0))
    assert set(full.attacks) == {"apgd-ce", "apgd-t", "fab-t", "square"}
    assert 0.0 <= full.accuracy <= 1.0
    assert bool(((full.x_adv >= 0) & (full.x_adv <= 1)).all())


def test_attack_report_counts():
    model = _linear().float()
    x = torch.randn(32, 4)
    y = model(x).argmax(1)
    record = attack_report(model, TensorDataset(x, y), "rtk:2", 0.3, 2, "gloro", AttackSettings(autoattack_fast=True, steps=20))
    assert record["points"] == 32 and record["broken"] == 0 and record["broken_points"] == []
    assert record["attacked"] == record["certified"] > 0
    assert record["empirical_robust_accuracy"] >= record["vra"]
    assert record["gap"] == pytest.approx(record["empirical_robust_accuracy"] - record["vra"])
    assert 0 <= record["autoattack_accuracy"] <= 1
    assert record["broken_claims"] == {"set": []}


# ----------------------------------------------------------------------------- relaxplug attack


@pytest.fixture
def checkpoint(tmp_path, monkeypatch):
    with CERTIFIERS.registered(OverClaiming.name, OverClaiming):
        yield blob_checkpoint(tmp_path, monkeypatch, 4, {"guarantee": "standard", "eps": 0.02})


def test_attack_main_exit_codes(checkpoint, tmp_path, capsys):
    import json

    code = cli_main(["attack", "--checkpoint", str(checkpoint), "--guarantee", "standard", "--eps", "5", "--norm", "2",
                     "--certifier", OverClaiming.name, "--steps", "20", "--restarts", "1", "--out", str(tmp_path / "bad"),
                     "--device", "cpu", "--no-autoattack", "--quiet"])
    out = capsys.readouterr().out
    assert code == 1
    record = json.loads((tmp_path / "bad" / "attack.json").read_text())
    assert record["certified"] == 24 and record["broken"] > 0
    assert "BROKEN" in out and ", ".join(map(str, record["broken_points"][:3])) in out

    code = cli_main(["attack", "--checkpoint", str(checkpoint), "--norm", "2", "--limit", "16", "--steps", "20",
                     "--restarts", "1", "--out", str(tmp_path / "good"), "--device", "cpu", "--autoattack-fast", "--quiet"])
    assert code == 0
    record = json.loads((tmp_path / "good" / "attack.json").read_text())
    assert record["points"] == 16 and record["eps"] == 0.02 and record["broken"] == 0
    assert record["certified"] > 0 and record["attacked"] == record["certified"]
    assert "autoattack_accuracy" in record


@pytest.mark.parametrize("norm", [2.0, float("inf")])
def test_counterexamples_are_moved_exactly_into_the_closed_ball(norm):
    x = torch.rand(64, 3, 5, 5) * 100
    direction = torch.randn_like(x)
    size = direction.flatten(1).abs().amax(1) if norm == float("inf") else direction.flatten(1).norm(dim=1)
    eps = 0.3
    x_adv = x + direction / size.view(-1, 1, 1, 1) * eps * (1 + 1e-7)  # an ulp or so outside
    inside = into_ball(x, x_adv, eps, norm)
    delta = (inside.double() - x.double()).flatten(1)
    reach = delta.abs().amax(1) if norm == float("inf") else delta.norm(dim=1)
    assert bool((reach <= eps).all())
    assert bool((reach >= eps * (1 - 1e-3)).all())  # moved, not reset to the clean point


@pytest.mark.parametrize("flag, value", [("--steps", "0"), ("--restarts", "-1"), ("--targets", "-2")])
def test_attack_refuses_vacuous_settings(checkpoint, tmp_path, capsys, flag, value):
    code = cli_main(["attack", "--checkpoint", str(checkpoint), flag, value, "--out", str(tmp_path), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and flag.lstrip("-") in err and "attack" in err
    assert not (tmp_path / "attack.json").exists()


def test_attack_refuses_unsupported_norm(checkpoint, tmp_path, capsys):
    code = cli_main(["attack", "--checkpoint", str(checkpoint), "--norm", "1", "--out", str(tmp_path), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "norm" in err and "'1'" in err  # D's parse-time check or A's Norm: both name it

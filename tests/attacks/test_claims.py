"""The claims hook: a user-written guarantee's claims are attacked and checked by the same code."""

import pytest
import torch
from torch import nn

import relaxplug as rp
from relaxplug.adapters import Guarantee
from relaxplug.adapters.claims import Claim
from relaxplug.attacks import AttackSettings, attack_guarantee, check_certificates
from relaxplug.modes import eval_mode


class PairKept(Guarantee):
    """Top-1 only, but the claim is weaker: the prediction beats class 0 (a custom claim)."""

    name = "pair-kept"

    def max_k(self, n_classes):
        return 1

    def accept(self, order):
        return torch.ones(order.shape[0], 1, dtype=torch.bool, device=order.device)

    def claims(self, cert):
        point = cert.certified.nonzero(as_tuple=True)[0]
        n = cert.classes.shape[1]
        winners = nn.functional.one_hot(cert.pred[point], n).bool()
        losers = torch.zeros_like(winners)
        losers[:, 0] = True
        losers &= ~winners
        return (Claim("beats-0", cert.eps, point, winners, losers),)


def test_a_user_guarantee_claims_are_attacked_and_a_false_one_is_caught():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5)).double().eval()
    x = torch.randn(30, 4, dtype=torch.float64)
    g = PairKept()
    cert = rp.certify(model, x, 0.05, 2, "gloro", g)
    assert check_certificates(model, x, cert, g, AttackSettings(steps=30)) == {"beats-0": []}
    # a lie at a huge radius: every point not predicting 0 claims to beat class 0 on the ball
    lie = rp.certify(model, x, 0.0, 2, "gloro", g)
    from dataclasses import replace
    lie = replace(lie, certified=lie.pred != 0, eps=50.0)
    broken = check_certificates(model, x, lie, g, AttackSettings(steps=30))
    assert set(broken["beats-0"]) == set((lie.pred != 0).nonzero().flatten().tolist())
    # the base candidate claims drive the empirical attack of the same guarantee
    result = attack_guarantee(model, x, None, g, 0.01, 2, AttackSettings(steps=10))
    assert result.claims[0].name == "set" and len(result.claims[0]) == 30


def test_vacuous_settings_are_refused():
    for bad in ({"steps": 0}, {"restarts": -1}, {"batch_size": 0}, {"step_size": 0.0}):
        with pytest.raises(ValueError, match="attack"):
            AttackSettings(**bad)


def test_eval_mode_restores_each_submodule_flag_and_certify_too():
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Linear(4, 3)).double()
    model.train()
    model[1].eval()  # frozen statistics inside a train-mode model
    with eval_mode(model):
        assert not any(m.training for m in model.modules())
    assert model.training and not model[1].training and model[2].training
    rp.certify(model, torch.randn(3, 4, dtype=torch.float64), 0.1, 2, "gloro", "standard")
    assert model.training and not model[1].training and model[0].training


def test_certify_errors_and_eps_forms():
    model = nn.Sequential(nn.Linear(4, 3)).double().eval()
    x = torch.randn(3, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match="empty batch"):
        rp.certify(model, x[:0], 0.1)
    with pytest.raises(TypeError, match="tuple"):
        rp.certify(lambda_module(), x, 0.1)
    import numpy as np
    a = rp.certify(model, x, np.float32(0.25))
    b = rp.certify(model, x, torch.tensor(0.25))
    assert a.eps == b.eps == pytest.approx(0.25)
    with pytest.raises(ValueError, match="out of range"):
        a.vra(torch.tensor([0, 1, 7]))
    with pytest.raises(ValueError, match="every one of the 3 classes"):
        rp.certify(model, x, 0.1, guarantee="affinity:0,1,2")
    with pytest.raises(ValueError, match="norm must be 2 or inf"):
        rp.certify(model, x, 0.1, norm=1)


def lambda_module():
    class Pair(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 3).double()

        def forward(self, x):
            return self.lin(x), x

    return Pair()


def test_attacks_show_progress_only_when_asked(capsys):
    model = nn.Sequential(nn.Linear(4, 3)).eval()
    x = torch.randn(6, 4)
    cert = rp.certify(model, x, 0.01, 2, "gloro", "standard")
    check_certificates(model, x, cert, settings=AttackSettings(steps=2, restarts=0, batch_size=2, progress=True))
    assert "attack claim 'set'" in capsys.readouterr().err
    check_certificates(model, x, cert, settings=AttackSettings(steps=2, restarts=0, batch_size=2))
    assert "attack claim" not in capsys.readouterr().err


def test_random_starts_follow_the_example_not_the_batch():
    """A point's random starts are seeded by its data-set index (``index_offset`` + row), so the
    points 4..7 attacked alone give what they give inside the whole batch; told the wrong index
    (offset 0) they are attacked from other starts and end elsewhere."""
    from relaxplug.attacks.claims import attack_claims

    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 5)).double()
    x = torch.randn(8, 4, dtype=torch.float64)
    sets = nn.functional.one_hot(model(x).argmax(1), 5).bool()
    settings = AttackSettings(steps=1, restarts=3, targets=0, step_size=1e-9)  # the starts decide
    whole = attack_claims(model, x, [Claim.of_sets("set", 2.0, torch.arange(8), sets.detach())], 2, settings)[0]
    tail = Claim.of_sets("set", 2.0, torch.arange(4), sets[4:].detach())
    alone = attack_claims(model, x[4:], [tail], 2, settings, index_offset=4)[0]
    assert torch.equal(alone, whole[4:])
    misplaced = attack_claims(model, x[4:], [tail], 2, settings)[0]
    assert not torch.equal(misplaced, whole[4:])

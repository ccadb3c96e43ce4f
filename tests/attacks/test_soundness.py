"""The soundness sweep (fast mode): no registered certifier is ever broken by an attack."""

from __future__ import annotations

import pytest

from relaxplug.certifiers import CERTIFIERS, list_certifiers
from relaxplug.certifiers.gloro import GloRoCertifier
from relaxplug.attacks.soundness import (LIPSCHITZ_NETS, WRAPPER_TRAINED, SweepSettings, soundness_sweep, sweep_guarantees,
                                        sweep_igrp, wrapper_trained_nets)

try:  # bound propagation joins the sweep when auto_LiRPA and its certifiers are there
    from relaxplug.certifiers import lirpa  # noqa: F401
except ImportError:
    pass


def test_every_registered_certifier_is_sound_on_the_fast_sweep():
    result = soundness_sweep(fast=True)
    ran = {row["certifier"] for row in result.rows}
    assert ran == set(list_certifiers())
    broken = [row for row in result.rows if row["broken"]]
    assert broken == [], broken
    for name, counts in result.totals().items():
        assert counts["certified"] > 0, f"{name} certified no point: the sweep checked nothing"
        assert counts["attacked"] == counts["claims"] >= counts["certified"]
    igrp = [row for row in result.rows if row["guarantee"].startswith("igrp:")]
    assert {row["certifier"] for row in igrp} == ran  # the two-radius guarantee is swept too
    for name in ran:
        mine = [row for row in igrp if row["certifier"] == name]
        assert sum(row["sizes"]["in"] for row in mine) > 0 and sum(row["sizes"]["out"] for row in mine) > 0, name
    wrapper = [row for row in result.rows if row["net"].endswith("-gloronet")]  # trained through rp.GloRoNet
    assert {row["certifier"] for row in wrapper} == ran and sum(row["certified"] for row in wrapper) > 0
    # gloro is L2-only: its L-inf combinations are skipped and counted, not silently dropped
    assert any(row["certifier"] == "gloro" and row["norm"] == "inf" for row in result.skipped)
    assert not any(row["certifier"] == "gloro" and row["norm"] == "inf" for row in result.rows)


def test_sweep_catches_an_overclaiming_certifier():
    class Shrunk(GloRoCertifier):
        """GloRo with a Lipschitz constant a fifth of the sound one: over-claims."""

        name = "test-shrunk"

        def pair_lipschitz(self, model, input_shape):
            return super().pair_lipschitz(model, input_shape) / 5

    with CERTIFIERS.registered("test-shrunk", Shrunk):
        settings = SweepSettings(points=32, train_steps=200, eps_scales=(1.0,), steps=30, restarts=1,
                                 random_nets=(), trained_nets=("dense-relu",))
        result = soundness_sweep(certifiers=["test-shrunk"], norms=(2.0,), settings=settings)
        assert result.broken > 0
        row = next(row for row in result.rows if row["broken"])
        assert row["broken_points"] and len(row["broken_points"]) == row["broken"]


def test_gloro_is_sound_on_the_liresnet_and_bro_nets():
    """The state-of-the-art Lipschitz nets (LiResNet: one-operator residual convolutions, Cholesky
    layers; BRO convolutions and dense layers), briefly trained: GloRo's certificates survive the
    attacks, and the same sweep catches GloRo with a fifth of the sound constant on them."""

    class Shrunk(GloRoCertifier):
        name = "test-shrunk"

        def pair_lipschitz(self, model, input_shape):
            return super().pair_lipschitz(model, input_shape) / 5

    with CERTIFIERS.registered("test-shrunk", Shrunk):
        settings = SweepSettings(points=32, train_steps=100, eps_scales=(1.0,), steps=30, restarts=1,
                                 random_nets=(), trained_nets=tuple(LIPSCHITZ_NETS))
        result = soundness_sweep(certifiers=["gloro", "test-shrunk"], norms=(2.0,), settings=settings)
    assert {row["net"] for row in result.rows} == {f"{name}-trained" for name in LIPSCHITZ_NETS}
    totals = result.totals()
    assert totals["gloro"]["broken"] == 0, [row for row in result.rows if row["broken"] and row["certifier"] == "gloro"]
    assert totals["gloro"]["certified"] > 0 and totals["gloro"]["attacked"] == totals["gloro"]["claims"]
    assert totals["test-shrunk"]["broken"] > 0


def test_sweep_guarantees_cover_overlap_and_partition():
    names = [name for name, _ in sweep_guarantees(5)]
    assert names[:3] == ["standard", "rtk:2", "rtk:3"]
    affinity = sweep_guarantees(5)[3][1]
    assert set(affinity.sets[0]) & set(affinity.sets[1])  # overlapping sets
    superclass = sweep_guarantees(5)[4][1]
    assert sorted(c for members in superclass.sets for c in members) == list(range(5))  # a partition
    with pytest.raises(ValueError):
        sweep_guarantees(3)


@pytest.mark.parametrize("n_classes, n_groups", [(4, 2), (5, 2), (6, 3), (10, 3)])
def test_sweep_igrp_partitions_the_classes(n_classes, n_groups):
    label, guarantee = sweep_igrp(n_classes, 0.3)
    assert len(guarantee.groups) == n_groups and all(guarantee.groups)
    assert sorted(c for g in guarantee.groups for c in g) == list(range(n_classes))
    assert guarantee.radii() == (0.15, 0.3) and label.endswith("@0.15,0.3")


def test_wrapper_family_is_trained_through_gloronet():
    """Every net of the family is a user model GloRo-trained by ``rp.GloRoNet``: it carries the
    wrapper's power-iteration buffers (a plain cross-entropy training leaves none)."""
    settings = SweepSettings(points=8, train_steps=3, eps_scales=(1.0,), steps=1, restarts=1, random_nets=(),
                             trained_nets=(), wrapper_nets=tuple(WRAPPER_TRAINED))
    nets = wrapper_trained_nets(settings)
    assert [net.name for net in nets] == [f"{name}-gloronet" for name in WRAPPER_TRAINED]
    for net in nets:
        assert not net.model.training and net.x.shape[0] == 8
        assert any("lipschitz_u" in key for key in net.model.state_dict()), net.name


@pytest.mark.slow
def test_the_full_sweep_breaks_no_certificate():
    """The full mode of ``benchmarks/soundness_sweep.py`` (every architecture random and trained,
    200 points, three radii, 100 PGD steps, 3 restarts): tens of minutes on 2 cores."""
    result = soundness_sweep(fast=False)
    assert result.broken == 0, [row for row in result.rows if row["broken"]]
    for name, counts in result.totals().items():
        assert counts["certified"] > 0 and counts["attacked"] == counts["claims"], name

"""RobustBench models through the real ``robustbench.utils.load_model``, from checkpoints written
here in the format it reads (random weights): the shims, the wrapper, IBP and GloRo on CPU, the CLI."""

import importlib
import importlib.util
import json
import subprocess
import sys
import types

import numpy as np
import pytest
import torch

import relaxplug as rp
from relaxplug import _compat
from relaxplug._compat import import_robustbench, shim_autoattack_module, shim_pkg_resources
from relaxplug.zoo import ROBUSTBENCH_EPS, ZooCheckpointError, load_robustbench, robustbench_paths

pytestmark = pytest.mark.skipif(importlib.util.find_spec("robustbench") is None, reason="robustbench is not installed")
needs_lirpa = pytest.mark.skipif(importlib.util.find_spec("auto_LiRPA") is None, reason="auto_LiRPA is not installed")

#: two architectures: PreAct-ResNet-18 with its normalization inside (mu/sigma buffers, BatchNorm
#: before the head) and ResNet-18 without normalization
ARCHITECTURES = {"Rice2020Overfitting": "PreActResNet", "Sehwag2021Proxy_R18": "ResNet"}


# ----------------------------------------------------------------------------- shims


@pytest.fixture
def restore_modules():
    """Put back the ``autoattack*`` / ``pkg_resources`` entries of ``sys.modules`` after a test."""
    names = lambda: {n for n in sys.modules if n == "autoattack" or n.startswith("autoattack.") or n == "pkg_resources"}  # noqa: E731
    saved = {n: sys.modules[n] for n in names()}
    yield
    for n in names() - set(saved):
        del sys.modules[n]
    sys.modules.update(saved)


def test_robustbench_shims_are_registered_pre_import():
    stages = {s.name: (s.package, s.stage) for s in _compat.SHIMS}
    assert stages["shim_autoattack_module"] == ("robustbench", "pre")
    assert stages["shim_pkg_resources"] == ("robustbench", "pre")


def test_autoattack_aliases_pyautoattack_when_missing(restore_modules):
    for name in [n for n in sys.modules if n == "autoattack" or n.startswith("autoattack.")]:
        del sys.modules[name]
    if importlib.util.find_spec("autoattack") is not None:
        pytest.skip("a real autoattack package is installed")
    assert shim_autoattack_module() is True
    pyautoattack = importlib.import_module("pyautoattack")
    from autoattack import AutoAttack  # noqa: E402
    from autoattack.state import EvaluationState  # noqa: E402

    assert AutoAttack is pyautoattack.AutoAttack
    assert EvaluationState is importlib.import_module("pyautoattack.state").EvaluationState
    assert shim_autoattack_module() is False  # idempotent


def test_autoattack_left_untouched_when_present(restore_modules, monkeypatch):
    existing = types.ModuleType("autoattack")
    existing.__spec__ = importlib.machinery.ModuleSpec("autoattack", None)
    monkeypatch.setitem(sys.modules, "autoattack", existing)
    assert shim_autoattack_module() is False
    assert sys.modules["autoattack"] is existing


def test_pkg_resources_provided_when_missing(restore_modules, monkeypatch):
    import_robustbench()  # robustbench.loaders, whose files the shim locates
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a, **k: None if name == "pkg_resources" else real_find_spec(name, *a, **k))
    sys.modules.pop("pkg_resources", None)
    assert shim_pkg_resources() is True
    path = sys.modules["pkg_resources"].resource_filename("robustbench.loaders", "helper_files/imagenet_test_image_ids.txt")
    assert path.endswith("robustbench/helper_files/imagenet_test_image_ids.txt")
    with open(path) as handle:  # the file robustbench's loaders read through it
        assert handle.readline().strip()


def test_pkg_resources_left_untouched_when_present(restore_modules, monkeypatch):
    existing = types.ModuleType("pkg_resources")
    existing.__spec__ = importlib.machinery.ModuleSpec("pkg_resources", None)
    monkeypatch.setitem(sys.modules, "pkg_resources", existing)
    assert shim_pkg_resources() is False
    assert sys.modules["pkg_resources"] is existing


def test_import_relaxplug_imports_no_robustbench():
    code = (
        "import sys\n"
        "import relaxplug, relaxplug.zoo, relaxplug.cli, relaxplug._compat\n"
        "relaxplug.cli.build_parser()\n"
        "bad = [m for m in ('robustbench', 'autoattack', 'timm') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_import_robustbench_missing_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "robustbench", None)
    monkeypatch.setitem(sys.modules, "robustbench.utils", None)
    with pytest.raises(ImportError, match=r"pip install --no-deps robustbench==1\.1\.1"):
        import_robustbench()


# ----------------------------------------------------------------------------- checkpoints


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """``<dir>/cifar10/L2/<name>.pt`` for both architectures, random weights, in the two layouts
    ``load_model`` reads: ``{"state_dict": ...}`` with DataParallel's ``module.`` prefix, and a
    bare state dict."""
    import_robustbench()
    from robustbench.model_zoo import model_dicts
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    root = tmp_path_factory.mktemp("robustbench")
    folder = root / "cifar10" / "L2"
    folder.mkdir(parents=True)
    torch.manual_seed(0)
    for i, name in enumerate(ARCHITECTURES):
        net = model_dicts[BenchmarkDataset.cifar_10][ThreatModel.L2][name]["model"]()
        for module in net.modules():  # non-trivial BatchNorm statistics
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
        state = net.state_dict()
        payload = {"state_dict": {f"module.{k}": v for k, v in state.items()}} if i == 0 else state
        torch.save(payload, folder / f"{name}.pt")
    return root


def _reference(name: str, model_dir) -> torch.nn.Module:
    """The zoo entry's architecture with the file's weights, loaded by hand."""
    from robustbench.model_zoo import model_dicts
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    net = model_dicts[BenchmarkDataset.cifar_10][ThreatModel.L2][name]["model"]()
    payload = torch.load(model_dir / "cifar10" / "L2" / f"{name}.pt", weights_only=True)
    state = payload.get("state_dict", payload)
    net.load_state_dict({k.removeprefix("module."): v for k, v in state.items()})
    return net.eval()


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_load_robustbench_is_load_models_model(name, model_dir):
    zoo = load_robustbench(name, "cifar10", "L2", model_dir)
    assert type(zoo.model).__name__ != "" and not zoo.model.training
    assert ARCHITECTURES[name] in [c.__name__ for c in type(zoo.model).__mro__]
    assert (zoo.input_shape, zoo.n_classes, zoo.norm, zoo.eps) == ((3, 32, 32), 10, 2.0, 0.5)
    assert zoo.path == model_dir / "cifar10" / "L2" / f"{name}.pt"
    assert zoo.class_names[0] == "airplane"
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(zoo.model(x), _reference(name, model_dir)(x))


def test_normalization_stays_inside_the_model(model_dir):
    zoo = load_robustbench("Rice2020Overfitting", "cifar10", "L2", model_dir)
    buffers = dict(zoo.model.named_buffers())
    assert torch.allclose(buffers["mu"].flatten(), torch.tensor([0.4914, 0.4822, 0.4465]))
    # the wrapped model takes pixels: shifting the input by mu changes the output (no outside step)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        plain = zoo.model(x)
        inner = type(zoo.model).__mro__[1].forward(zoo.model, (x - zoo.model.mu) / zoo.model.sigma)
    assert torch.allclose(plain, inner, atol=1e-5)


def _sampled_margins(model, x, order, eps, samples=32):
    """Smallest ``f_{o_0} - f_{o_1}`` seen at random points of the L2 sphere of radius ``eps``."""
    worst = torch.full((x.shape[0],), float("inf"))
    with torch.no_grad():
        for _ in range(samples // 16):
            delta = torch.randn(16, *x.shape)
            delta = eps * delta / delta.flatten(2).norm(dim=2)[..., None, None, None]
            for b in range(x.shape[0]):
                logits = model(x[b] + delta[:, b])
                worst[b] = min(worst[b], float((logits[:, order[b, 0]] - logits[:, order[b, 1]]).min()))
    return worst


def _check_certifier(model, certifier: str, thorough: bool = True):
    """eps = 0 certifies the clean ranking; eps > 0 bounds sampled margins from below (and, when
    ``thorough``, falls as eps grows; a relaxed guarantee certifies too)."""
    torch.manual_seed(1)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        logits = model(x)
    order = logits.argsort(dim=1, descending=True)
    gap = logits.gather(1, order[:, :2])
    gap = gap[:, 0] - gap[:, 1]
    # eps = 0: every point is certified, with the clean top-1 margin
    exact = rp.certify(model, x, 0.0, 2, certifier, "standard", radius=False)
    assert exact.certified.all()
    assert torch.allclose(exact.margin, gap, rtol=1e-3, atol=1e-3)
    assert exact.pred.tolist() == order[:, 0].tolist()
    # eps > 0: a lower bound of every margin in the ball, falling as eps grows
    eps = 1e-4
    cert = rp.certify(model, x, eps, 2, certifier, "standard", radius=False)
    assert (cert.margin <= gap + 1e-4).all()
    assert (cert.margin <= _sampled_margins(model, x, order, eps) + 1e-4).all()
    if not thorough:
        return
    wider = rp.certify(model, x, 10 * eps, 2, certifier, "standard", radius=False)
    assert (wider.margin <= cert.margin + 1e-6).all()
    # a relaxed guarantee on the same model: vehicles vs animals
    relaxed = rp.certify(model, x, 0.0, 2, certifier, "affinity:cifar10", radius=False)
    assert relaxed.certified.all() and (relaxed.k >= 1).all()


@needs_lirpa
@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_ibp_certifies_robustbench_model(name, model_dir):
    _check_certifier(load_robustbench(name, "cifar10", "L2", model_dir).model, "ibp")


# the sound Lipschitz bound of a ResNet-18 takes 30-50 s on one CPU core (float64 SVDs per frequency)
@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_gloro_certifies_robustbench_model(name, model_dir):
    _check_certifier(load_robustbench(name, "cifar10", "L2", model_dir).model, "gloro", thorough=False)


# ----------------------------------------------------------------------------- errors


def test_missing_checkpoint_names_the_exact_path(tmp_path):
    expected = tmp_path / "cifar10" / "L2" / "Standard.pt"
    assert robustbench_paths("Standard", "cifar10", "L2", tmp_path) == [expected]
    with pytest.raises(FileNotFoundError) as error:
        load_robustbench("Standard", "cifar10", "L2", tmp_path)
    assert str(expected) in str(error.value) and "never downloads" in str(error.value)
    assert not expected.exists()


def test_ensemble_paths_follow_load_models_naming(tmp_path):
    paths = robustbench_paths("Chen2020Adversarial", "cifar10", "Linf", tmp_path)
    assert [p.name for p in paths] == [f"Chen2020Adversarial.pt_m{i}.pt" for i in range(3)]


def test_weights_of_another_architecture_are_rejected(model_dir, tmp_path):
    folder = tmp_path / "cifar10" / "L2"
    folder.mkdir(parents=True)
    (folder / "Rice2020Overfitting.pt").write_bytes((model_dir / "cifar10" / "L2" / "Sehwag2021Proxy_R18.pt").read_bytes())
    with pytest.raises(ZooCheckpointError, match="Rice2020Overfitting"):
        load_robustbench("Rice2020Overfitting", "cifar10", "L2", tmp_path)


def test_unknown_names_are_rejected_with_suggestions(tmp_path):
    with pytest.raises(ValueError, match="did you mean Rice2020Overfitting"):
        load_robustbench("Rice2020Overfiting", "cifar10", "L2", tmp_path)
    with pytest.raises(ValueError, match="threat model"):
        load_robustbench("Standard", "cifar10", "L3", tmp_path)
    with pytest.raises(ValueError, match="dataset"):
        load_robustbench("Standard", "svhn", "L2", tmp_path)


def test_leaderboard_radii():
    assert ROBUSTBENCH_EPS[("cifar10", "L2")] == (2.0, 0.5)
    assert ROBUSTBENCH_EPS[("cifar10", "Linf")] == (float("inf"), 8 / 255)


# ----------------------------------------------------------------------------- command line


@needs_lirpa
def test_cli_eval_robustbench_on_a_local_npz(model_dir, tmp_path, capsys):
    from relaxplug.cli import main

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(4, 32, 32, 3), dtype=np.uint8)
    y = rng.integers(0, 10, size=4)
    data = tmp_path / "test_images.npz"
    np.savez(data, x_train=x, y_train=y, x_test=x, y_test=y)
    sets = tmp_path / "sets.yaml"
    sets.write_text("sets: [[airplane, automobile, ship, truck], [cat, dog]]\n")
    out = tmp_path / "out"
    code = main(["eval", "--robustbench", "Sehwag2021Proxy_R18", "--dataset", "cifar10", "--threat-model", "L2",
                 "--model-dir", str(model_dir), "--certifier", "crown-ibp", "--guarantee", f"affinity:{sets}",
                 "--data", str(data), "--eps", "0", "--quiet", "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "robustbench Sehwag2021Proxy_R18" in printed and "crown-ibp" in printed
    record = json.loads(next(out.glob("eval_*.json")).read_text())
    assert record["points"] == 4 and record["certifier"] == "crown-ibp" and record["rejection_rate"] == 0.0
    assert record["checkpoint"].endswith("cifar10/L2/Sehwag2021Proxy_R18.pt")


def test_cli_eval_robustbench_missing_checkpoint(tmp_path, capsys):
    from relaxplug.cli import main

    code = main(["eval", "--robustbench", "Standard", "--threat-model", "L2", "--model-dir", str(tmp_path)])
    assert code == 2
    assert str(tmp_path / "cifar10" / "L2" / "Standard.pt") in capsys.readouterr().err

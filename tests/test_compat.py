"""The compatibility shims: each installs its API only where it is missing, leaves an existing
one untouched, and together they let auto_LiRPA 0.3 import and bound a net."""

import importlib
import inspect
import subprocess
import sys
import types

import numpy
import pytest
import torch
from torch import nn

from relaxplug import _compat
from relaxplug._compat import (
    SHIMS,
    apply_shims,
    import_auto_lirpa,
    shim_bounded_module_named_members,
    shim_node_getitem,
    shim_numpy_arraysetops,
    shim_patches_device,
    shim_relu_alpha_gradient,
    shim_set_opset_version,
)

lirpa_installed = importlib.util.find_spec("auto_LiRPA") is not None
needs_lirpa = pytest.mark.skipif(not lirpa_installed, reason="auto_LiRPA is not installed")


def test_registry_lists_every_shim_once_by_package_and_stage():
    names = [s.name for s in SHIMS]
    assert len(names) == len(set(names))
    stages = {s.name: (s.package, s.stage) for s in SHIMS}
    assert stages["shim_numpy_arraysetops"] == ("auto_LiRPA", "pre")
    assert stages["shim_set_opset_version"] == ("auto_LiRPA", "pre")
    assert stages["shim_node_getitem"] == ("auto_LiRPA", "pre")
    assert stages["shim_bounded_module_named_members"] == ("auto_LiRPA", "post")
    assert stages["shim_patches_device"] == ("auto_LiRPA", "post")
    assert stages["shim_relu_alpha_gradient"] == ("auto_LiRPA", "post")
    with pytest.raises(ValueError, match="stage"):
        _compat.register_shim("x", "during")


def test_import_relaxplug_applies_no_shim():
    code = (
        "import sys, torch\n"
        "before = hasattr(torch._C.Node, '__getitem__'), 'numpy.lib.arraysetops' in sys.modules\n"
        "import relaxplug, relaxplug.certifiers.certify, relaxplug.evaluation.compare, relaxplug._compat\n"
        "assert 'auto_LiRPA' not in sys.modules\n"
        "assert (hasattr(torch._C.Node, '__getitem__'), 'numpy.lib.arraysetops' in sys.modules) == before\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# ----------------------------------------------------------------------------- numpy.lib.arraysetops


def test_arraysetops_installed_when_missing(monkeypatch):
    monkeypatch.delitem(sys.modules, "numpy.lib.arraysetops", raising=False)
    monkeypatch.delattr(numpy.lib, "arraysetops", raising=False)
    missing = True
    try:
        importlib.import_module("numpy.lib.arraysetops")
        missing = False
    except ImportError:
        pass
    assert shim_numpy_arraysetops() is missing
    from numpy.lib.arraysetops import isin  # noqa: E402

    assert isin(numpy.array([1, 2, 3]), [2]).tolist() == [False, True, False]


def test_arraysetops_left_untouched_when_present(monkeypatch):
    existing = types.ModuleType("numpy.lib.arraysetops")
    existing.isin = numpy.isin
    monkeypatch.setitem(sys.modules, "numpy.lib.arraysetops", existing)
    assert shim_numpy_arraysetops() is False
    assert sys.modules["numpy.lib.arraysetops"] is existing


# ----------------------------------------------------------------------------- torch.onnx


def test_set_opset_version_installed_when_missing(monkeypatch):
    helper = importlib.import_module("torch.onnx.symbolic_helper")
    monkeypatch.delattr(helper, "_set_opset_version", raising=False)
    globals_ = _compat._onnx_globals()
    monkeypatch.setattr(globals_, "export_onnx_opset_version", globals_.export_onnx_opset_version)
    assert shim_set_opset_version() is True
    helper._set_opset_version(12)
    assert globals_.export_onnx_opset_version == 12


def test_set_opset_version_left_untouched_when_present(monkeypatch):
    helper = importlib.import_module("torch.onnx.symbolic_helper")
    sentinel = lambda version: None  # noqa: E731
    monkeypatch.setattr(helper, "_set_opset_version", sentinel, raising=False)
    assert shim_set_opset_version() is False
    assert helper._set_opset_version is sentinel


def _constant_node():
    graph = torch._C.Graph()
    node = graph.create("prim::Constant")
    node.i_("value", 3)
    return graph, node


def test_node_getitem_installed_when_missing(monkeypatch):
    # setattr then delattr: the attribute is absent during the test and restored (or removed) after
    monkeypatch.setattr(torch._C.Node, "__getitem__", None, raising=False)
    monkeypatch.delattr(torch._C.Node, "__getitem__")
    assert shim_node_getitem() is True
    _graph, node = _constant_node()
    assert node["value"] == 3


def test_node_getitem_left_untouched_when_present(monkeypatch):
    sentinel = lambda self, key: "sentinel"  # noqa: E731
    monkeypatch.setattr(torch._C.Node, "__getitem__", sentinel, raising=False)
    assert shim_node_getitem() is False
    _graph, node = _constant_node()
    assert node["value"] == "sentinel"


# ----------------------------------------------------------------------------- auto_LiRPA classes


@needs_lirpa
def test_named_members_accepts_remove_duplicate(monkeypatch):
    import_auto_lirpa()
    from auto_LiRPA.bound_general import BoundedModule

    current = vars(BoundedModule)["_named_members"]
    original = getattr(current, "_relaxplug_original", current)
    monkeypatch.setattr(BoundedModule, "_named_members", original)
    assert "remove_duplicate" not in inspect.signature(BoundedModule._named_members).parameters
    assert shim_bounded_module_named_members() is True
    assert "remove_duplicate" in inspect.signature(BoundedModule._named_members).parameters
    bounded = BoundedModule(nn.Sequential(nn.Linear(3, 2)), (torch.zeros(1, 3),))
    assert len(list(bounded.named_parameters())) == 2


@needs_lirpa
def test_named_members_left_untouched_when_compatible(monkeypatch):
    import_auto_lirpa()
    from auto_LiRPA.bound_general import BoundedModule

    def modern(self, get_members_fn, prefix="", recurse=True, remove_duplicate=True):
        return nn.Module._named_members(self, get_members_fn, prefix, recurse, remove_duplicate)

    monkeypatch.setattr(BoundedModule, "_named_members", modern)
    from auto_LiRPA.bound_multi_gpu import BoundDataParallel

    monkeypatch.setattr(BoundDataParallel, "_named_members", modern)
    assert shim_bounded_module_named_members() is False
    assert vars(BoundedModule)["_named_members"] is modern


@needs_lirpa
def test_patches_device_installed_when_missing(monkeypatch):
    import_auto_lirpa()
    from auto_LiRPA.patches import Patches

    if "device" in vars(Patches):
        monkeypatch.delattr(Patches, "device")
    assert not hasattr(Patches, "device")
    assert shim_patches_device() is True
    assert Patches(torch.zeros(1, 1, 1, 1, 1, 1, 1)).device == torch.device("cpu")


@needs_lirpa
def test_patches_device_left_untouched_when_present(monkeypatch):
    import_auto_lirpa()
    from auto_LiRPA.patches import Patches

    sentinel = property(lambda self: "sentinel")
    monkeypatch.setattr(Patches, "device", sentinel, raising=False)
    assert shim_patches_device() is False
    assert vars(Patches)["device"] is sentinel


# ----------------------------------------------------------------------------- alpha-CROWN slopes


def test_unit_clamp_keeps_values_and_passes_the_gradient_on_the_closed_interval():
    alpha = torch.tensor([-0.5, 0.0, 0.3, 1.0, 1.5], requires_grad=True)
    out = _compat._clamp_unit_inclusive(alpha)
    out.sum().backward()
    assert torch.equal(out.detach(), alpha.detach().clamp(0, 1))
    assert alpha.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 0.0]


@needs_lirpa
def test_relu_alpha_shim_computes_the_same_values(monkeypatch):
    import_auto_lirpa()
    from auto_LiRPA.operators.activation import BoundRelu

    lower = torch.tensor([-1.0, -1.0, 0.5, -2.0])
    upper = torch.tensor([1.0, -0.5, 2.0, 3.0])
    alpha = torch.tensor([0.0, 0.7, 1.0, 0.4])
    shimmed = BoundRelu._relu_mask_alpha(lower, upper, alpha, alpha)
    # auto_LiRPA 0.3's formula: clamp(alpha) on unstable neurons, 1 on active ones, 0 on dead ones
    lower_mask = (lower >= 0).float()
    reference = alpha.clamp(0, 1) * (1 - lower_mask) * (1 - (upper <= 0).float()) + lower_mask
    assert torch.equal(shimmed[0], reference) and torch.equal(shimmed[1], reference)
    assert reference.tolist() == pytest.approx([0.0, 0.0, 1.0, 0.4])
    assert bool(shimmed[2]) is False


@needs_lirpa
def test_relu_alpha_shim_installed_only_when_clamp_blocks_the_gradient(monkeypatch):
    import_auto_lirpa()
    from auto_LiRPA.operators.activation import BoundRelu

    def upstream(lower, upper, lb_lower_d, ub_lower_d):
        return lb_lower_d, ub_lower_d, False

    monkeypatch.setattr(BoundRelu, "_relu_mask_alpha", staticmethod(upstream))
    monkeypatch.setattr(_compat, "_clamp_has_boundary_gradient", lambda: True)
    assert shim_relu_alpha_gradient() is False  # a torch whose clamp passes the gradient
    assert vars(BoundRelu)["_relu_mask_alpha"].__func__ is upstream
    monkeypatch.setattr(_compat, "_clamp_has_boundary_gradient", lambda: False)
    assert shim_relu_alpha_gradient() is True
    assert vars(BoundRelu)["_relu_mask_alpha"].__func__ is _compat._relu_mask_alpha
    assert shim_relu_alpha_gradient() is False  # idempotent

    def renamed(low, up, a, b):  # a newer auto_LiRPA with another signature is left alone
        return a, b, False

    monkeypatch.setattr(BoundRelu, "_relu_mask_alpha", staticmethod(renamed))
    assert shim_relu_alpha_gradient() is False
    assert vars(BoundRelu)["_relu_mask_alpha"].__func__ is renamed


def test_clamp_boundary_gradient_probe_reports_this_torch():
    alpha = torch.tensor([0.0, 1.0], requires_grad=True)
    alpha.clamp(0, 1).sum().backward()
    assert _compat._clamp_has_boundary_gradient() == bool((alpha.grad == 1).all())


# ----------------------------------------------------------------------------- importer


@needs_lirpa
def test_import_auto_lirpa_bounds_a_tiny_net_exactly():
    lirpa = import_auto_lirpa()
    assert apply_shims("auto_LiRPA", "pre") == [] and apply_shims("auto_LiRPA", "post") == []  # idempotent
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 3)).double()
    x = torch.randn(5, 4, dtype=torch.float64)
    bounded = lirpa.BoundedModule(net, (x[:1],))
    c = torch.tensor([[1.0, -1.0, 0.0]], dtype=torch.float64).expand(5, 1, 3)
    w, b = net[0].weight, net[0].bias
    exact = x @ (w[0] - w[1]) + b[0] - b[1] - 0.1 * (w[0] - w[1]).norm()
    for method in ("IBP", "CROWN-IBP", "CROWN"):
        ptb = lirpa.PerturbationLpNorm(norm=2.0, eps=0.1)
        lower, _ = bounded.compute_bounds(x=(lirpa.BoundedTensor(x, ptb),), C=c, method=method)
        assert torch.allclose(lower[:, 0], exact, atol=1e-10), method


def test_import_auto_lirpa_missing_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "auto_LiRPA", None)
    with pytest.raises(ImportError, match=r"pip install --no-deps auto-lirpa==0\.3"):
        import_auto_lirpa()


def test_version_gated_shims_apply_only_to_older_releases(monkeypatch):
    calls = []
    shim = _compat.Shim("fakepkg", "pre", "shim_fake", lambda: calls.append(1) or True, _compat.parse_version("0.4"))
    monkeypatch.setattr(_compat, "SHIMS", [shim])
    monkeypatch.setattr(_compat, "installed_version", lambda package: (0, 7, 1))
    assert _compat.apply_shims("fakepkg", "pre") == [] and calls == []
    monkeypatch.setattr(_compat, "installed_version", lambda package: (0, 3))
    assert _compat.apply_shims("fakepkg", "pre") == ["shim_fake"] and calls == [1]


def test_parse_version():
    assert _compat.parse_version("0.7.1") == (0, 7, 1)
    assert _compat.parse_version("0.3") == (0, 3)
    assert _compat.parse_version("0.3.dev1") == (0, 3)
    with pytest.raises(ValueError):
        _compat.parse_version("dev")


def test_the_installed_auto_lirpa_gets_only_the_shims_its_version_needs():
    """Run in a fresh interpreter: on 0.7.x no 0.3-era shim is installed."""
    import subprocess
    import sys

    code = ("import relaxplug._compat as c, warnings; warnings.simplefilter('ignore');"
            "v = c.installed_version('auto_LiRPA'); pre = c.apply_shims('auto_LiRPA', 'pre');"
            "import auto_LiRPA; post = c.apply_shims('auto_LiRPA', 'post'); print(v, '|', sorted(pre + post))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    version, _, applied = (part.strip() for part in done.stdout.strip().partition("|"))
    if version.startswith("(0, 3"):
        assert "shim_set_opset_version" in applied and "shim_bounded_module_named_members" in applied
    else:
        assert applied in ("[]", "['shim_relu_alpha_gradient']"), applied

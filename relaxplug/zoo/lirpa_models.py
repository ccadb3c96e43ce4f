"""The networks CROWN-IBP and auto_LiRPA publish, by name, and loaders for their checkpoints.

Model definitions (rewritten here from the projects' published architectures; the parameter
names and order of each are kept, so their ``state_dict`` keys match the projects' files):

=============================  ===========================================================
``crown-ibp/cnn_2layer``       CROWN-IBP ``model_cnn_2layer(in_ch, in_dim, width, linear_size)``:
                               conv 4x4/2 (4w), conv 4x4/2 (8w), dense ``linear_size``, logits.
                               Also convex_adversarial's MNIST net of auto_LiRPA's
                               ``simple_verification.py`` (``width=4, linear_size=100``).
``crown-ibp/cnn_3layer_fixed`` ``model_cnn_3layer_fixed(in_ch, in_dim, kernel_size, width,
                               linear_size)``: conv k (4w), conv k (8w), conv 4x4/4 (8w), dense.
``crown-ibp/cnn_4layer``       ``model_cnn_4layer(in_ch, in_dim, width, linear_size)``: conv 3 (4w),
                               conv 4/2 (4w), conv 3 (8w), conv 4/2 (8w), two dense, logits.
``crown-ibp/ibp_large``        ``model_defs_gowal.IBP_large``: Gowal et al.'s large CNN (convs of
                               64, 64, 128/2, 128, 128, dense 512).
``auto-lirpa/cnn_4layer``      auto_LiRPA ``examples/vision/models`` ``cnn_4layer``: conv1, conv2
                               (4x4/2), fc1, fc2 (also ``mnist_cnn_small.pth``'s ``cnn_MNIST``).
``auto-lirpa/cnn_6layer``      ``cnn_6layer``: four 3x3 convs (w, w, 2w/2, 2w), dense, logits.
``auto-lirpa/cnn_7layer``      ``cnn_7layer``: five 3x3 convs (w, w, 2w/2, 2w, 2w), dense, logits.
``auto-lirpa/cnn_7layer_bn``   ``cnn_7layer_bn``: the same with BatchNorm after every conv.
``auto-lirpa/mlp_2layer``      ``mlp_2layer``, ``mlp_3layer``, ``mlp_5layer``: dense ReLU nets
``auto-lirpa/mlp_3layer``      (``fc1``, ``fc2``, ...) of widths 256, (256, 128),
``auto-lirpa/mlp_5layer``      (256, 256, 256, 128) times ``width``.
=============================  ===========================================================

Every hyperparameter (``width``, ``linear_size``, ``kernel_size``, the number of classes, the input
channels) is read from the checkpoint's weight shapes; the input size comes from the data (the
caller's ``input_shape``). The weights must then fit exactly: a checkpoint of another
architecture raises :class:`~relaxplug.zoo.ZooCheckpointError` naming the keys that differ.
Flattening is ``nn.Flatten`` (the projects' ``x.view(x.size(0), -1)``: the same function).

Checkpoint formats (all read with ``torch.load(..., weights_only=True)``):

- a bare ``state_dict`` (auto_LiRPA's ``pretrained/*.pth``, ``simple_verification.py``);
- ``{"state_dict": state_dict, "epoch": ..., "optimizer": ...}`` (auto_LiRPA's training
  scripts, CROWN-IBP's ``train.py``);
- ``{"state_dict": [state_dict], ...}`` (a list of state dicts, the first used, as CROWN-IBP's
  ``config_modelloader`` does; its best-model files also carry numpy ``robust_err``/``clean_err``,
  whose numpy scalar types are allowed for the load);
- keys prefixed ``module.`` (``DataParallel``) or ``model.`` (auto_LiRPA's ``CrossEntropyWrapper``).
  Keys containing ``prev`` are dropped for CROWN-IBP architectures, as its loader does.

Inputs: both projects feed MNIST as ``ToTensor()`` pixels and normalize CIFAR-10 with mean
``(0.4914, 0.4822, 0.4465)`` and std ``(0.2023, 0.1994, 0.2010)`` in the data loader (CROWN-IBP's
``normalize_input``). ``normalize="cifar10"`` puts that normalization inside the model as a
:class:`relaxplug.models.layers.Normalize` layer, so ``eps`` is measured in pixel space (their Linf
``eps / std`` per channel is the same ball).
"""

from __future__ import annotations

import math
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from relaxplug.models.layers import Normalize
from relaxplug.registry import Registry

from relaxplug.zoo.base import ZooCheckpointError, ZooModel, load_weights

__all__ = [
    "LIRPA_ARCHITECTURES",
    "LIRPA_NORMALIZATIONS",
    "LirpaArchitecture",
    "build_lirpa_model",
    "list_lirpa_architectures",
    "load_lirpa_model",
    "read_lirpa_checkpoint",
    "register_lirpa_architecture",
]

#: input normalizations the projects' data loaders apply: name -> (mean, std)
LIRPA_NORMALIZATIONS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
}

StateDict = Mapping[str, Tensor]


@dataclass(frozen=True)
class LirpaArchitecture:
    """A published architecture: ``build(in_ch, in_dim, n_classes, **params)`` and ``infer(state_dict)``
    reading ``params`` (and ``in_ch``, ``n_classes``) back from a checkpoint's weight shapes."""

    name: str
    project: str  # "CROWN-IBP" or "auto_LiRPA"
    build: Callable[..., nn.Module]
    infer: Callable[[StateDict], dict[str, Any]]
    defaults: dict[str, Any] = field(default_factory=dict)

    def __call__(self, input_shape: Sequence[int], n_classes: int = 10, **params: Any) -> nn.Module:
        in_ch, in_dim = _image_shape(self.name, input_shape)
        unknown = sorted(set(params) - set(self.defaults))
        if unknown:
            raise ValueError(f"{self.name} takes {sorted(self.defaults) or 'no parameters'}, got {unknown}")
        return self.build(in_ch, in_dim, int(n_classes), **{**self.defaults, **params})


LIRPA_ARCHITECTURES: Registry[nn.Module] = Registry("CROWN-IBP / auto_LiRPA architecture")


def register_lirpa_architecture(name: str, project: str, infer: Callable[[StateDict], dict[str, Any]],
                                **defaults: Any) -> Callable:
    """Decorator registering ``build(in_ch, in_dim, n_classes, **params) -> nn.Module`` as ``name``."""

    def decorator(build: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        LIRPA_ARCHITECTURES.add(name, LirpaArchitecture(name, project, build, infer, dict(defaults)))
        return build

    return decorator


def list_lirpa_architectures() -> list[str]:
    return LIRPA_ARCHITECTURES.names()


def _image_shape(name: str, input_shape: Sequence[int]) -> tuple[int, int]:
    shape = tuple(int(s) for s in input_shape)
    if len(shape) != 3 or shape[1] != shape[2]:
        raise ValueError(f"{name} takes square images (C, H, H), got input shape {shape}")
    return shape[0], shape[1]


def _shape(state: StateDict, key: str, name: str) -> tuple[int, ...]:
    if key not in state:
        raise ZooCheckpointError(f"not a {name} checkpoint (weights of another architecture?): it has no {key!r} "
                                 f"(keys: {sorted(state)[:6]}...)")
    return tuple(state[key].shape)


# ----------------------------------------------------------------------------- CROWN-IBP (model_defs.py)


def _crown_ibp_infer(name: str, first_conv: str, dense: str, last: str, *, kernel: bool = False,
                     width_div: int = 4) -> Callable[[StateDict], dict[str, Any]]:
    def infer(state: StateDict) -> dict[str, Any]:
        conv = _shape(state, first_conv, name)
        params: dict[str, Any] = {"in_ch": conv[1], "n_classes": _shape(state, last, name)[0]}
        if width_div:
            params["width"] = conv[0] // width_div
        if dense:
            params["linear_size"] = _shape(state, dense, name)[0]
        if kernel:
            params["kernel_size"] = conv[2]
        return params

    return infer


@register_lirpa_architecture("crown-ibp/cnn_2layer", "CROWN-IBP", _crown_ibp_infer("crown-ibp/cnn_2layer", "0.weight", "5.weight", "7.weight"),
                             width=1, linear_size=128)
def crown_ibp_cnn_2layer(in_ch: int, in_dim: int, n_classes: int, width: int, linear_size: int) -> nn.Sequential:
    """Two 4x4 stride-2 convolutions (``4 width``, ``8 width`` channels), a dense layer, logits."""
    side = in_dim // 4
    return nn.Sequential(
        nn.Conv2d(in_ch, 4 * width, 4, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(4 * width, 8 * width, 4, stride=2, padding=1), nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * width * side * side, linear_size), nn.ReLU(),
        nn.Linear(linear_size, n_classes),
    )


@register_lirpa_architecture("crown-ibp/cnn_3layer_fixed", "CROWN-IBP",
                             _crown_ibp_infer("crown-ibp/cnn_3layer_fixed", "0.weight", "7.weight", "9.weight", kernel=True),
                             kernel_size=3, width=1, linear_size=None)
def crown_ibp_cnn_3layer_fixed(in_ch: int, in_dim: int, n_classes: int, kernel_size: int, width: int,
                               linear_size: int | None) -> nn.Sequential:
    """Convolutions of ``kernel_size`` (3 or 5, padding 1) with ``4 width`` and ``8 width`` channels, a 4x4
    stride-4 convolution, a dense layer of ``linear_size`` (default ``64 width``), logits."""
    if kernel_size not in (3, 5):
        raise ValueError(f"cnn_3layer_fixed takes kernel_size 3 or 5, got {kernel_size}")
    linear_size = 64 * width if linear_size is None else linear_size
    side = (in_dim - 4) // 4 if kernel_size == 5 else in_dim // 4
    return nn.Sequential(
        nn.Conv2d(in_ch, 4 * width, kernel_size, stride=1, padding=1), nn.ReLU(),
        nn.Conv2d(4 * width, 8 * width, kernel_size, stride=1, padding=1), nn.ReLU(),
        nn.Conv2d(8 * width, 8 * width, 4, stride=4, padding=0), nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * width * side * side, linear_size), nn.ReLU(),
        nn.Linear(linear_size, n_classes),
    )


@register_lirpa_architecture("crown-ibp/cnn_4layer", "CROWN-IBP", _crown_ibp_infer("crown-ibp/cnn_4layer", "0.weight", "9.weight", "13.weight"),
                             width=1, linear_size=256)
def crown_ibp_cnn_4layer(in_ch: int, in_dim: int, n_classes: int, width: int, linear_size: int) -> nn.Sequential:
    """Convolutions 3x3 (``4 width``), 4x4/2 (``4 width``), 3x3 (``8 width``), 4x4/2 (``8 width``), two
    dense layers of ``linear_size``, logits."""
    side = in_dim // 4
    return nn.Sequential(
        nn.Conv2d(in_ch, 4 * width, 3, stride=1, padding=1), nn.ReLU(),
        nn.Conv2d(4 * width, 4 * width, 4, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(4 * width, 8 * width, 3, stride=1, padding=1), nn.ReLU(),
        nn.Conv2d(8 * width, 8 * width, 4, stride=2, padding=1), nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * width * side * side, linear_size), nn.ReLU(),
        nn.Linear(linear_size, linear_size), nn.ReLU(),
        nn.Linear(linear_size, n_classes),
    )


def _large_cnn(in_ch: int, in_dim: int, n_classes: int, width: int, linear_size: int,
               batch_norm: bool = False, convs: int = 5) -> nn.Sequential:
    """3x3 convolutions of ``width``, ``width``, ``2 width`` (stride 2), ``2 width``[, ``2 width``], a
    dense layer, logits (IBP_large / cnn_6layer / cnn_7layer[_bn])."""
    plan = [(in_ch, width, 1), (width, width, 1), (width, 2 * width, 2)]
    plan += [(2 * width, 2 * width, 1)] * (convs - 3)
    layers: list[nn.Module] = []
    for cin, cout, stride in plan:
        layers.append(nn.Conv2d(cin, cout, 3, stride=stride, padding=1))
        if batch_norm:
            layers.append(nn.BatchNorm2d(cout))
        layers.append(nn.ReLU())
    side = in_dim // 2
    layers += [nn.Flatten(), nn.Linear(side * side * 2 * width, linear_size), nn.ReLU(),
               nn.Linear(linear_size, n_classes)]
    return nn.Sequential(*layers)


@register_lirpa_architecture("crown-ibp/ibp_large", "CROWN-IBP",
                             _crown_ibp_infer("crown-ibp/ibp_large", "0.weight", "11.weight", "13.weight", width_div=0),
                             linear_size=512)
def crown_ibp_ibp_large(in_ch: int, in_dim: int, n_classes: int, linear_size: int) -> nn.Sequential:
    """Gowal et al.'s large IBP model: 3x3 convolutions of 64, 64, 128 (stride 2), 128, 128, dense, logits."""
    return _large_cnn(in_ch, in_dim, n_classes, 64, linear_size)


# ----------------------------------------------------------------------------- auto_LiRPA (examples/vision/models)


class AutoLirpaCNN4Layer(nn.Module):
    """auto_LiRPA's ``cnn_4layer``: ``conv1``, ``conv2`` (4x4 stride 2, ``4 width`` and ``8 width``
    channels), ``fc1`` (``linear_size``), ``fc2`` (logits), ReLU between them."""

    def __init__(self, in_ch: int, in_dim: int, n_classes: int = 10, width: int = 2, linear_size: int = 256):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, 4 * width, 4, stride=2, padding=1)
        self.conv2 = nn.Conv2d(4 * width, 8 * width, 4, stride=2, padding=1)
        self.fc1 = nn.Linear(8 * width * (in_dim // 4) * (in_dim // 4), linear_size)
        self.fc2 = nn.Linear(linear_size, n_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        x = F.relu(self.fc1(torch.flatten(x, 1)))
        return self.fc2(x)


def _cnn_4layer_infer(state: StateDict) -> dict[str, Any]:
    conv = _shape(state, "conv1.weight", "auto-lirpa/cnn_4layer")
    return {"in_ch": conv[1], "width": conv[0] // 4, "linear_size": _shape(state, "fc1.weight", "auto-lirpa/cnn_4layer")[0],
            "n_classes": _shape(state, "fc2.weight", "auto-lirpa/cnn_4layer")[0]}


@register_lirpa_architecture("auto-lirpa/cnn_4layer", "auto_LiRPA", _cnn_4layer_infer, width=2, linear_size=256)
def auto_lirpa_cnn_4layer(in_ch: int, in_dim: int, n_classes: int, width: int, linear_size: int) -> nn.Module:
    return AutoLirpaCNN4Layer(in_ch, in_dim, n_classes, width, linear_size)


def _large_infer(name: str, first: str, dense: str, last: str) -> Callable[[StateDict], dict[str, Any]]:
    def infer(state: StateDict) -> dict[str, Any]:
        conv = _shape(state, first, name)
        return {"in_ch": conv[1], "width": conv[0], "linear_size": _shape(state, dense, name)[0],
                "n_classes": _shape(state, last, name)[0]}

    return infer


@register_lirpa_architecture("auto-lirpa/cnn_6layer", "auto_LiRPA", _large_infer("auto-lirpa/cnn_6layer", "0.weight", "9.weight", "11.weight"),
                             width=32, linear_size=256)
def auto_lirpa_cnn_6layer(in_ch: int, in_dim: int, n_classes: int, width: int, linear_size: int) -> nn.Sequential:
    return _large_cnn(in_ch, in_dim, n_classes, width, linear_size, convs=4)


@register_lirpa_architecture("auto-lirpa/cnn_7layer", "auto_LiRPA", _large_infer("auto-lirpa/cnn_7layer", "0.weight", "11.weight", "13.weight"),
                             width=64, linear_size=512)
def auto_lirpa_cnn_7layer(in_ch: int, in_dim: int, n_classes: int, width: int, linear_size: int) -> nn.Sequential:
    return _large_cnn(in_ch, in_dim, n_classes, width, linear_size)


@register_lirpa_architecture("auto-lirpa/cnn_7layer_bn", "auto_LiRPA", _large_infer("auto-lirpa/cnn_7layer_bn", "0.weight", "16.weight", "18.weight"),
                             width=64, linear_size=512)
def auto_lirpa_cnn_7layer_bn(in_ch: int, in_dim: int, n_classes: int, width: int, linear_size: int) -> nn.Sequential:
    return _large_cnn(in_ch, in_dim, n_classes, width, linear_size, batch_norm=True)


class AutoLirpaMLP(nn.Module):
    """auto_LiRPA's ``mlp_Nlayer``: flatten, then ``fc1 ... fcN`` with ReLU between them."""

    def __init__(self, in_features: int, widths: Sequence[int], n_classes: int):
        super().__init__()
        sizes = [in_features, *widths, n_classes]
        for i in range(len(sizes) - 1):
            self.add_module(f"fc{i + 1}", nn.Linear(sizes[i], sizes[i + 1]))
        self.depth = len(sizes) - 1

    def forward(self, x: Tensor) -> Tensor:
        x = torch.flatten(x, 1)
        for i in range(1, self.depth):
            x = F.relu(getattr(self, f"fc{i}")(x))
        return getattr(self, f"fc{self.depth}")(x)


def _mlp(short: str, base: Sequence[int]) -> None:
    depth = len(base) + 1
    name = f"auto-lirpa/{short}"

    def infer(state: StateDict) -> dict[str, Any]:
        first = _shape(state, "fc1.weight", name)
        width, rest = divmod(first[0], base[0])
        if rest or width < 1:
            raise ZooCheckpointError(f"not a {name} checkpoint: fc1 has {first[0]} outputs, not a multiple of {base[0]}")
        if f"fc{depth + 1}.weight" in state:
            raise ZooCheckpointError(f"not a {name} checkpoint: it has more than {depth} dense layers")
        return {"width": width, "n_classes": _shape(state, f"fc{depth}.weight", name)[0]}

    def build(in_ch: int, in_dim: int, n_classes: int, width: int) -> nn.Module:
        return AutoLirpaMLP(in_ch * in_dim * in_dim, [b * width for b in base], n_classes)

    build.__doc__ = f"auto_LiRPA's ``{short}``: dense layers of {', '.join(str(b) for b in base)} times ``width``, logits."
    register_lirpa_architecture(name, "auto_LiRPA", infer, width=1)(build)


_mlp("mlp_2layer", (256,))
_mlp("mlp_3layer", (256, 128))
_mlp("mlp_5layer", (256, 256, 256, 128))


# ----------------------------------------------------------------------------- checkpoints


def _numpy_scalar_globals() -> list:
    """The numpy reconstructors a pickled numpy scalar needs (CROWN-IBP's ``robust_err``)."""
    import numpy

    core = getattr(numpy, "_core", None) or numpy.core
    allowed = [core.multiarray.scalar, numpy.dtype]
    allowed += [type(numpy.dtype(t)) for t in ("float64", "float32", "int64", "int32", "bool")]
    return allowed


def _torch_load(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if "numpy" not in str(error):
            raise ZooCheckpointError(f"{path}: cannot be read as weights ({error})") from error
    with torch.serialization.safe_globals(_numpy_scalar_globals()):
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as error:
            raise ZooCheckpointError(f"{path}: cannot be read as weights ({error})") from error


def _strip(state: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    if state and all(k.startswith(prefix) for k in state):
        return {k[len(prefix):]: v for k, v in state.items()}
    return state


def read_lirpa_checkpoint(path: str | os.PathLike) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """``(state_dict, other entries)`` of a CROWN-IBP / auto_LiRPA checkpoint in any of the formats in
    the module docstring (``module.``/``model.`` prefixes removed)."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"checkpoint not found: {file}")
    payload = _torch_load(file)
    if not isinstance(payload, dict):
        raise ZooCheckpointError(f"{file}: expected a state dict or a dict with 'state_dict', got {type(payload).__name__}")
    extra: dict[str, Any] = {}
    state: Any = payload
    if "state_dict" in payload:
        state = payload["state_dict"]
        extra = {k: v for k, v in payload.items() if k not in ("state_dict", "optimizer")}
        if isinstance(state, (list, tuple)):  # CROWN-IBP: a list of state dicts, the first is the model
            if not state:
                raise ZooCheckpointError(f"{file}: 'state_dict' is an empty list")
            state = state[0]
    if not isinstance(state, dict) or not state or not all(isinstance(v, Tensor) for v in state.values()):
        raise ZooCheckpointError(f"{file}: no state dict of tensors found (top-level keys: {sorted(payload)[:8]})")
    state = _strip(_strip(dict(state), "module."), "model.")
    plain = {k: (v.item() if hasattr(v, "item") and getattr(v, "ndim", 1) == 0 else v) for k, v in extra.items()}
    return state, plain


def build_lirpa_model(name: str, input_shape: Sequence[int], n_classes: int = 10, **params: Any) -> nn.Module:
    """Build architecture ``name`` (:func:`list_lirpa_architectures`) with random weights."""
    return LIRPA_ARCHITECTURES.create(str(name).strip().lower(), input_shape, n_classes, **params)


def _normalization(normalize: str | tuple[Sequence[float], Sequence[float]] | None, channels: int):
    if normalize is None or normalize == "none":
        return None
    if isinstance(normalize, str):
        if normalize not in LIRPA_NORMALIZATIONS:
            raise ValueError(f"unknown normalization {normalize!r}; known: none, {', '.join(LIRPA_NORMALIZATIONS)}")
        mean, std = LIRPA_NORMALIZATIONS[normalize]
    else:
        mean, std = normalize
    if len(mean) != channels or len(std) != channels:
        raise ValueError(f"normalization has {len(mean)} means and {len(std)} stds for {channels} input channels")
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)


def load_lirpa_model(name: str, checkpoint: str | os.PathLike, input_shape: Sequence[int],
                     normalize: str | tuple[Sequence[float], Sequence[float]] | None = None,
                     device: str | torch.device = "cpu") -> ZooModel:
    """Load a CROWN-IBP / auto_LiRPA checkpoint into architecture ``name``.

    Args:
        name: ``crown-ibp/cnn_4layer``, ``auto-lirpa/cnn_7layer``, ... (:func:`list_lirpa_architectures`).
        checkpoint: a file in one of the projects' formats (module docstring).
        input_shape: ``(C, H, H)`` of one input (``(1, 28, 28)`` MNIST, ``(3, 32, 32)`` CIFAR).
        normalize: ``None`` (MNIST; inputs as the network reads them), ``"cifar10"`` (both projects'
            CIFAR-10 loader normalization) or ``(mean, std)``: put inside the model as its first layer.
    Returns:
        a :class:`~relaxplug.zoo.ZooModel` in eval mode (``details``: hyperparameters read from the
        weights, the normalization, the checkpoint's epoch and other plain entries).
    Raises:
        ZooCheckpointError: the weights belong to another architecture (or input size), or the file
            is in no known format.
    """
    key = str(name).strip().lower()
    arch = LIRPA_ARCHITECTURES.get(key)
    assert isinstance(arch, LirpaArchitecture)
    in_ch, _ = _image_shape(key, input_shape)
    state, extra = read_lirpa_checkpoint(checkpoint)
    if arch.project == "CROWN-IBP":
        state = {k: v for k, v in state.items() if "prev" not in k}
    params = arch.infer(state)
    found_ch = params.pop("in_ch", in_ch)
    n_classes = int(params.pop("n_classes"))
    if found_ch != in_ch:
        raise ZooCheckpointError(f"{checkpoint}: weights for {found_ch}-channel inputs, but the inputs have "
                                 f"{in_ch} channels (shape {tuple(input_shape)})")
    net = arch(input_shape, n_classes, **params)
    load_weights(net, state, f"{checkpoint} as {key} {params} for input {tuple(int(s) for s in input_shape)}")
    norm = _normalization(normalize, in_ch)
    model: nn.Module = net if norm is None else nn.Sequential(Normalize(*norm), net)
    details = {"project": arch.project, "params": params,
               "normalization": None if norm is None else {"mean": list(norm[0]), "std": list(norm[1])}}
    # plain numeric entries the projects store beside the weights (epoch, robust_err, clean_err)
    details.update({k: v for k, v in extra.items()
                    if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)})
    return ZooModel(model=model.to(device).eval(), source=arch.project.lower().replace("_", "-"), name=key,
                    input_shape=tuple(int(s) for s in input_shape), n_classes=n_classes, path=Path(checkpoint),
                    details=details)

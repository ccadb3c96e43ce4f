"""Layer-wise L2 Lipschitz bounds of a network body and the GloRo head constants ``K_ji``.

A model is a body followed by a final ``nn.Linear`` head ``W``. For ``f = W h(x) + b`` with
``Lip(h) <= L``, ``f_j - f_i`` is ``L * ||w_j - w_i||``-Lipschitz (Leino et al. 2021), so

    K_ji = L * ||w_j - w_i||_2.

``L`` is the product of per-layer bounds (a residual ``x + g(x)`` contributes ``1 + Lip(g)``).
Two modes: ``sound`` (exact dense spectral norms, FFT upper bounds for convolutions; a proof,
computed once and cached until the weights change) and ``power`` (power iteration with
persistent vectors: converges from below, so an estimate; what training uses).
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import torch
from torch import Tensor, nn

from relaxplug.lipschitz import spectral
from relaxplug.models.layers import InvertibleDownsample, MinMax, Normalize, Residual

if TYPE_CHECKING:
    from relaxplug.lipschitz.graph import GraphLipschitzEstimator

__all__ = [
    "LipschitzEstimator",
    "UnsupportedLayerError",
    "split_head",
    "head_distances",
    "body_lipschitz",
    "LIPSCHITZ_MODES",
]

LIPSCHITZ_MODES = ("sound", "power")

#: layers that are 1-Lipschitz in L2 and hold no weights
ONE_LIPSCHITZ = (nn.ReLU, MinMax, InvertibleDownsample, nn.Flatten, nn.Identity, nn.Dropout)


class UnsupportedLayerError(TypeError):
    """Raised when a model holds a layer the Lipschitz analysis has no bound for."""


def _leaves(module: nn.Module) -> list[nn.Module]:
    if isinstance(module, nn.Sequential):
        if type(module).forward is not nn.Sequential.forward:
            # a Sequential subclass with its own forward need not apply its children in order
            raise UnsupportedLayerError(f"{type(module).__name__} overrides nn.Sequential.forward")
        return [leaf for child in module for leaf in _leaves(child)]
    return [module]


def split_head(model: nn.Module) -> tuple[list[nn.Module], nn.Linear]:
    """Flatten nested ``nn.Sequential`` containers; return (body layers, final linear head)."""
    layers = _leaves(model)
    head = layers[-1]
    if not isinstance(head, nn.Linear):
        raise UnsupportedLayerError(
            f"GloRo needs the model to end in nn.Linear (the logit layer), found {type(head).__name__}; "
            "build the model as nn.Sequential(..., nn.Linear(features, n_classes))"
        )
    return layers[:-1], head


def head_distances(weight: Tensor) -> Tensor:
    """``D[j, i] = ||w_j - w_i||_2`` for the head's rows. Shape ``(n, d) -> (n, n)``.

    Computed by explicit differences (no ``|a|^2 + |b|^2 - 2ab`` cancellation).
    """
    return torch.cdist(weight[None], weight[None], compute_mode="donot_use_mm_for_euclid_dist")[0]


def _record_input_shapes(model: nn.Module, layers: Sequence[nn.Module], input_shape: Sequence[int]) -> dict[int, tuple[int, ...]]:
    shapes: dict[int, tuple[int, ...]] = {}
    handles = []

    def hook(module: nn.Module, inputs: tuple[Tensor, ...]) -> None:
        shapes.setdefault(id(module), tuple(inputs[0].shape[1:]))

    for layer in layers:
        for sub in layer.modules():
            handles.append(sub.register_forward_pre_hook(hook))
    flags = [m.training for m in model.modules()]
    try:
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        dtype = param.dtype if param is not None else torch.float32
        model.eval()  # a shape probe must not update BatchNorm statistics
        with torch.no_grad():
            model(torch.zeros(1, *input_shape, device=device, dtype=dtype))
    finally:
        for h in handles:
            h.remove()
        for m, flag in zip(model.modules(), flags):
            m.training = flag
    return shapes


LayerBound = Callable[[nn.Module, tuple[int, ...]], Tensor]


def _product(layers: Sequence[nn.Module], shapes: dict[int, tuple[int, ...]], bound: LayerBound, ref: Tensor) -> Tensor:
    total = torch.ones((), dtype=ref.dtype, device=ref.device)
    for layer in layers:
        total = total * _layer_bound(layer, shapes, bound, ref)
    return total


def _layer_bound(layer: nn.Module, shapes: dict[int, tuple[int, ...]], bound: LayerBound, ref: Tensor) -> Tensor:
    if isinstance(layer, (Residual, Normalize, *ONE_LIPSCHITZ)) and not _standard_forward(layer):
        raise UnsupportedLayerError(f"{type(layer).__name__} overrides the forward of a supported layer")
    if isinstance(layer, ONE_LIPSCHITZ):
        return torch.ones((), dtype=ref.dtype, device=ref.device)
    if isinstance(layer, (nn.Linear, nn.Conv2d)):
        if id(layer) not in shapes:
            raise RuntimeError(f"layer {layer} was not reached by the forward pass")
        return bound(layer, shapes[id(layer)])
    if isinstance(layer, nn.Sequential):
        return _product(list(layer), shapes, bound, ref)
    if isinstance(layer, Residual):
        return 1 + _product(_leaves(layer.block), shapes, bound, ref)
    if isinstance(layer, Normalize):
        return (1 / layer.std.min()).to(ref.dtype)
    raise UnsupportedLayerError(
        f"no Lipschitz bound for layer {type(layer).__name__}; supported: Linear, Conv2d, ReLU, "
        "MinMax, InvertibleDownsample, Flatten, Identity, Dropout, Normalize, Residual, Sequential"
    )


def _standard_forward(layer: nn.Module) -> bool:
    """Whether ``layer`` computes what its supported base class computes (no overridden forward)."""
    for cls in (Residual, Normalize, *ONE_LIPSCHITZ):
        if isinstance(layer, cls):
            return type(layer).forward is cls.forward
    return True


def _conv_args(conv: nn.Conv2d) -> dict:
    return dict(stride=conv.stride, padding=conv.padding, dilation=conv.dilation, groups=conv.groups)


def _sound_layer_bound(layer: nn.Module, shape: tuple[int, ...]) -> Tensor:
    weight = layer.weight.detach()
    if isinstance(layer, nn.Linear):
        value = spectral.dense_spectral_norm(weight)
    else:
        value = spectral.conv_spectral_bound(
            weight, tuple(shape[1:]), padding_mode=layer.padding_mode, **_conv_args(layer)
        )
    return torch.tensor(value, dtype=torch.float64, device=weight.device)


def body_lipschitz(model: nn.Module, input_shape: Sequence[int]) -> float:
    """Sound upper bound on the L2 Lipschitz constant of the body (all layers before the head)."""
    body, _ = split_head(model)
    shapes = _record_input_shapes(model, body, input_shape)
    ref = torch.zeros((), dtype=torch.float64)
    return float(_product(body, shapes, lambda layer, shape: _sound_layer_bound(layer, shape).cpu(), ref))


def _alive(ref: "weakref.ReferenceType[nn.Module]") -> nn.Module:
    model = ref()
    if model is None:
        raise ReferenceError("the model of this Lipschitz estimator no longer exists")
    return model


def _fingerprint(model: nn.Module) -> tuple:
    return tuple(
        (id(t), t._version, t.data_ptr(), t.dtype, t.device)
        for t in list(model.parameters()) + list(model.buffers())
    )


class LipschitzEstimator:
    """Lipschitz constants of one model for inputs of one shape.

    ``sound()`` returns the cached provable body bound (recomputed when any weight changes);
    ``power(n_iter)`` runs ``n_iter`` power iterations per layer from persistent vectors and
    returns a body bound differentiable w.r.t. the weights (GloRo training).
    """

    def __init__(self, model: nn.Module, input_shape: Sequence[int]):
        self._model = weakref.ref(model)  # weak: the estimator cache must not keep models alive
        self.input_shape = tuple(int(s) for s in input_shape)
        self.body, self.head = split_head(model)
        self.shapes = _record_input_shapes(model, self.body, self.input_shape)
        self._check_supported()
        self.vectors: dict[str, Tensor] = {}
        self._names = {id(m): name for name, m in model.named_modules()}
        self._sound_cache: tuple[tuple, float] | None = None
        self._pair_cache: tuple[tuple, Tensor] | None = None

    @property
    def model(self) -> nn.Module:
        return _alive(self._model)

    def _check_supported(self) -> None:
        ref = torch.zeros(())
        _product(self.body, self.shapes, lambda layer, shape: ref, ref)

    def weighted_layers(self) -> Iterator[tuple[str, nn.Module]]:
        for module in self.model.modules():
            if isinstance(module, (nn.Linear, nn.Conv2d)) and module is not self.head and id(module) in self.shapes:
                yield self._names[id(module)], module

    def sound(self) -> float:
        """Provable upper bound on the body's L2 Lipschitz constant (cached)."""
        key = _fingerprint(self.model)
        if self._sound_cache is None or self._sound_cache[0] != key:
            ref = torch.zeros((), dtype=torch.float64)
            value = float(
                _product(self.body, self.shapes, lambda layer, shape: _sound_layer_bound(layer, shape).cpu(), ref)
            )
            self._sound_cache = (key, value)
        return self._sound_cache[1]

    @property
    def dtype(self) -> torch.dtype:
        """dtype of the logits (the head's weights)."""
        return self.head.weight.dtype

    def pair_lipschitz(self, mode: str = "sound") -> Tensor:
        """``(n, n)`` float64 matrix ``K_ji = L_body * ||w_j - w_i||`` (``mode``: sound or power)."""
        if mode not in LIPSCHITZ_MODES:
            raise ValueError(f"mode must be one of {LIPSCHITZ_MODES}, got {mode!r}")
        if mode != "sound":
            return head_distances(self.head.weight.detach().double()) * self.converged()
        # cached with the body bound: the (n, n) head distances cost O(n^2 d), more than the
        # forward pass of a 1,000-class model
        body = self.sound()
        key = (_fingerprint(self.model), body)
        if self._pair_cache is None or self._pair_cache[0] != key:
            self._pair_cache = (key, head_distances(self.head.weight.detach().double()) * body)
        return self._pair_cache[1].clone()

    def power(self, n_iter: int = 2) -> Tensor:
        """Body bound from ``n_iter`` power iterations per layer with persistent vectors.

        Differentiable w.r.t. the weights. Converges from below: an estimate, not a proof.
        """
        ref = self.head.weight

        def bound(layer: nn.Module, shape: tuple[int, ...]) -> Tensor:
            name = self._names[id(layer)]
            vector = self.vectors.get(name)
            if vector is not None:
                vector = vector.to(layer.weight.device)
            if isinstance(layer, nn.Linear):
                sigma, vector = spectral.power_iteration_dense(layer.weight, vector, n_iter)
            else:
                sigma, vector = spectral.power_iteration_conv(
                    layer.weight, tuple(shape), vector, n_iter, **_conv_args(layer)
                )
            self.vectors[name] = vector.detach()
            return sigma.to(ref.dtype)

        return _product(self.body, self.shapes, bound, ref)

    def converged(self, tol: float = 1e-6, max_iter: int = 2000) -> float:
        """Power iteration run until the product changes by less than ``tol`` (relative)."""
        previous = None
        with torch.no_grad():
            for _ in range(max_iter // 10):
                value = float(self.power(10))
                if previous is not None and abs(value - previous) <= tol * max(abs(value), 1e-12):
                    return value
                previous = value
        return float(value)

    def state_dict(self) -> dict[str, Tensor]:
        return {name: v.detach().cpu() for name, v in self.vectors.items()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.vectors = {name: v.clone() for name, v in state.items()}


_ESTIMATORS: "weakref.WeakKeyDictionary[nn.Module, dict[tuple[int, ...], Any]]" = weakref.WeakKeyDictionary()


def estimator_for(model: nn.Module, input_shape: Sequence[int]) -> "LipschitzEstimator | GraphLipschitzEstimator":
    """The cached Lipschitz estimator of ``model`` for inputs of ``input_shape``.

    A layer stack this module supports gets a :class:`LipschitzEstimator` (the fast path GloRo
    training uses); any other model gets a
    :class:`~relaxplug.lipschitz.graph.GraphLipschitzEstimator`, which bounds the torch.fx graph
    of the model (BatchNorm, residual blocks, pooling...; sound, looser) or raises
    :class:`UnsupportedLayerError` naming the op it cannot bound. Both offer ``sound()``,
    ``converged()``, ``pair_lipschitz(mode)`` and ``dtype``.
    """
    per_shape = _ESTIMATORS.setdefault(model, {})
    key = tuple(int(s) for s in input_shape)
    if key not in per_shape:
        try:
            per_shape[key] = LipschitzEstimator(model, key)
        except UnsupportedLayerError:
            from relaxplug.lipschitz.graph import GraphLipschitzEstimator

            per_shape[key] = GraphLipschitzEstimator(model, key)
    return per_shape[key]

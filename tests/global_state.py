"""Models whose forward reads module-level (global) Python state, for the stale-cache tests.

Each case is ``(name, build, change)``: ``build()`` resets the globals and returns a model;
``change()`` rewrites global state so that the model computes a different, steeper function
(the input is scaled up inside the net), which a cached bound or conversion must not survive.
"""

from __future__ import annotations

import types

import torch
from torch import Tensor, nn

from tests import global_state_config as config

GAIN = 1.0
GAINS = {"input": 1.0}
SETTINGS = types.SimpleNamespace(gain=1.0)
INPUT_SCALE = torch.ones(6)
SHARED = nn.Linear(6, 6).requires_grad_(False)  # a frozen layer shared by models, not a submodule


def _scaled(x: Tensor) -> Tensor:
    """A helper the forward calls: its own global read counts too."""
    return x * GAIN


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(5)
        self.body = nn.Sequential(nn.Linear(6, 24), nn.ReLU())
        self.head = nn.Linear(24, 4)

    def scale(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(self.scale(x)))


class GlobalNumber(_Net):
    def scale(self, x: Tensor) -> Tensor:
        return x * GAIN


class GlobalDict(_Net):
    def scale(self, x: Tensor) -> Tensor:
        return x * GAINS["input"]


class GlobalObject(_Net):
    def scale(self, x: Tensor) -> Tensor:
        return x * SETTINGS.gain


class GlobalTensor(_Net):
    def scale(self, x: Tensor) -> Tensor:
        return x * INPUT_SCALE


class GlobalHelper(_Net):
    def scale(self, x: Tensor) -> Tensor:
        return _scaled(x)


class GlobalModuleAttribute(_Net):
    def scale(self, x: Tensor) -> Tensor:
        return x * config.GAIN


class GlobalLayer(_Net):
    def scale(self, x: Tensor) -> Tensor:
        return SHARED(x)


class LambdaAttribute(_Net):
    def __init__(self) -> None:
        super().__init__()
        self.fn = lambda x: x * GAIN

    def scale(self, x: Tensor) -> Tensor:
        return self.fn(x)


def _reset() -> None:
    global GAIN
    GAIN = 1.0
    GAINS["input"] = 1.0
    SETTINGS.gain = 1.0
    INPUT_SCALE.fill_(1.0)
    config.GAIN = 1.0
    with torch.no_grad():
        SHARED.weight.copy_(torch.eye(6))
        SHARED.bias.zero_()


def _build(cls: type) -> nn.Module:
    _reset()
    return cls().eval()


def _set_gain() -> None:
    global GAIN
    GAIN = 30.0


def _set_dict() -> None:
    GAINS["input"] = 30.0


def _set_attr() -> None:
    SETTINGS.gain = 30.0


def _scale_tensor() -> None:
    INPUT_SCALE.mul_(30.0)


def _set_module_attr() -> None:
    config.GAIN = 30.0


def _scale_shared_layer() -> None:
    SHARED.weight.data.mul_(30.0)  # through .data: no version bump


CASES = [
    ("global_number", lambda: _build(GlobalNumber), _set_gain),
    ("global_dict", lambda: _build(GlobalDict), _set_dict),
    ("global_object_attribute", lambda: _build(GlobalObject), _set_attr),
    ("global_tensor", lambda: _build(GlobalTensor), _scale_tensor),
    ("global_helper_function", lambda: _build(GlobalHelper), _set_gain),
    ("global_module_attribute", lambda: _build(GlobalModuleAttribute), _set_module_attr),
    ("global_layer", lambda: _build(GlobalLayer), _scale_shared_layer),
    ("lambda_attribute", lambda: _build(LambdaAttribute), _set_gain),
]

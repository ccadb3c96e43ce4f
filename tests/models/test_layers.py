import pytest
import torch

from relaxplug.models.layers import InvertibleDownsample, MinMax, Normalize


@pytest.mark.parametrize("shape", [(6,), (4, 5, 5)])
def test_minmax_lirpa_form_is_exact(shape):
    x = torch.randn(8, *shape)
    layer = MinMax()
    out = layer(x)
    assert torch.allclose(layer.lirpa_form(shape)(x), out, atol=1e-6)
    a, b = x.chunk(2, 1)
    assert torch.equal(out, torch.cat([torch.maximum(a, b), torch.minimum(a, b)], 1))


def test_minmax_is_norm_preserving():
    x = torch.randn(16, 8)
    assert torch.allclose(MinMax()(x).norm(dim=1), x.norm(dim=1))


def test_downsample_conv_form_is_exact_and_isometric():
    x = torch.randn(3, 5, 8, 8)
    layer = InvertibleDownsample(2)
    out = layer(x)
    assert out.shape == (3, 20, 4, 4)
    assert torch.equal(layer.lirpa_form((5, 8, 8))(x), out)
    assert torch.allclose(out.flatten(1).norm(dim=1), x.flatten(1).norm(dim=1))


def test_errors():
    with pytest.raises(ValueError, match="even"):
        MinMax()(torch.randn(2, 3))
    with pytest.raises(ValueError, match="positive"):
        Normalize([0.0], [0.0])

"""On a CUDA device: every certifier agrees with its CPU answer, training runs and its checkpoint
loads on the CPU, and ``compare`` measures CUDA memory. Skipped without a CUDA device."""

import math

import pytest
import torch
from torch import nn

import relaxplug as rp
from relaxplug.certifiers import get_certifier, list_certifiers
from relaxplug.models.checkpoint import load_checkpoint
from relaxplug.evaluation.compare import compare_certifiers
from relaxplug.training.config import TrainConfig
from relaxplug.models.architectures import build_model
from relaxplug.training.trainer import train

from relaxplug.certifiers import lirpa  # noqa: F401,E402  (registers the bound-propagation certifiers)

pytestmark = pytest.mark.gpu

CUDA = torch.device("cuda")


def _dense_minmax(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), rp.layers.MinMax(), nn.Linear(32, 10)).eval()


@pytest.mark.parametrize("certifier", ["gloro", "ibp", "crown-ibp", "crown", "alpha-crown"])
@pytest.mark.parametrize("guarantee", ["standard", "rtk:3", "affinity:1,7;3,8,9"])
def test_certificates_on_cuda_match_the_cpu(certifier, guarantee):
    if certifier not in list_certifiers():
        pytest.skip(f"{certifier} is not installed")
    model = _dense_minmax()
    x = torch.rand(64, 1, 8, 8)
    options = {"iterations": 3} if certifier == "alpha-crown" else {}
    eps = 0.05
    cpu = rp.certify(model, x, eps, 2, get_certifier(certifier, **options), guarantee, radius=False)
    gpu = rp.certify(model.to(CUDA), x.to(CUDA), eps, 2, get_certifier(certifier, **options), guarantee,
                     radius=False).to("cpu")
    model.to("cpu")
    assert torch.equal(cpu.pred, gpu.pred)
    scale = 1e-3 * (1 + cpu.margin.abs())
    assert torch.allclose(cpu.margin, gpu.margin, rtol=0, atol=float(scale.max()))
    decided = (cpu.margin.abs() > scale) & (gpu.margin.abs() > scale)  # away from the threshold
    assert torch.equal(cpu.certified[decided], gpu.certified[decided])
    assert torch.equal(cpu.k[decided], gpu.k[decided])


def test_gloro_training_on_cuda_writes_a_checkpoint_the_cpu_loads(tmp_path):
    config = TrainConfig(name="gpu", dataset="digits", architecture="digits_cnn", guarantee="rtk:2", eps=0.3,
                         epochs=2, batch_size=64, lr="1e-3", device="cuda", limit_train=256, out_dir=str(tmp_path))
    result = train(config, progress=False)
    loaded = load_checkpoint(result.checkpoint, "cpu")
    assert all(p.device.type == "cpu" for p in loaded.model.parameters())
    x = torch.rand(8, 1, 8, 8)
    cert = rp.certify(loaded.model, x, 0.3, 2, "gloro", "rtk:2")
    assert cert.pred.shape == (8,) and torch.isfinite(cert.margin).all()


def test_compare_measures_cuda_memory():
    model = build_model("digits_cnn", (1, 8, 8), 10).to(CUDA).eval()
    x = torch.rand(32, 1, 8, 8, device=CUDA)
    y = torch.randint(0, 10, (32,), device=CUDA)
    names = [n for n in ("gloro", "crown-ibp") if n in list_certifiers()]
    result = compare_certifiers(model, x, y, "rtk:2", 0.1, 2, names, batch_size=16, progress=False)
    assert result.device.startswith("cuda") and result.memory_method.startswith("cuda")
    for record in result.records:
        assert math.isfinite(record.peak_memory_mb_per_instance) and record.peak_memory_mb_per_instance >= 0

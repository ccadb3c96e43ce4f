import os

import pytest
import torch

# The suite's models are tiny: one intra-op thread avoids thread start-up and contention costs
# that dominate at this size (several times faster on a loaded 2-core machine).
torch.set_num_threads(int(os.environ.get("RELAXPLUG_TEST_THREADS", "1")))


def pytest_collection_modifyitems(config, items):
    run_slow = os.environ.get("RELAXPLUG_RUN_SLOW") == "1"
    has_gpu = torch.cuda.is_available()
    for item in items:
        if "slow" in item.keywords and not run_slow:
            item.add_marker(pytest.mark.skip(reason="slow: set RELAXPLUG_RUN_SLOW=1"))
        if "gpu" in item.keywords and not has_gpu:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA device"))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield

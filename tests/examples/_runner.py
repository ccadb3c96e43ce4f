"""Load an example script as a module (examples/ is not a package)."""

import importlib.util
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def load_example(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def has_docstring(module) -> bool:
    return bool(module.__doc__) and len(module.__doc__.strip().splitlines()) > 3


class one_thread:
    """Run a block on one torch CPU thread (tiny batches gain nothing from more; CI's cores are shared)."""

    def __enter__(self):
        import torch

        self.threads = torch.get_num_threads()
        torch.set_num_threads(1)

    def __exit__(self, *exc):
        import torch

        torch.set_num_threads(self.threads)

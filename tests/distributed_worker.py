"""Run by ``tests/test_distributed.py`` under ``torchrun`` (gloo, CPU).

``python tests/distributed_worker.py OUT``: each rank exercises :mod:`relaxplug.distributed`
and rank 0 writes what it saw to ``OUT/result.json``.
``python tests/distributed_worker.py OUT CONFIG.yaml``: each rank trains with
:func:`relaxplug.training.trainer.train` and saves its own final parameters and buffers to
``OUT/rank{RANK}.pt`` (what the test compares between ranks and process counts).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
from torch import nn

import relaxplug as rp
from relaxplug import distributed
from relaxplug.adapters.certificate import Certificate
from relaxplug.models.layers import MinMax


def main(out: Path) -> None:
    torch.set_num_threads(1)
    context = distributed.setup("cpu")
    torch.manual_seed(0)  # the same model and data on every rank
    model = nn.Sequential(nn.Linear(6, 16), MinMax(), nn.Linear(16, 5))
    x = torch.randn(23, 6)

    shard = distributed.shard_range(len(x), context)
    mine = rp.certify(model, x[shard.start:shard.stop], eps=0.1, guarantee="rtk:2")
    parts = distributed.gather_to_main(mine, context)
    sums = distributed.reduce_sums({"certified": float(mine.certified.sum()), "points": float(len(mine))}, context)

    vector = torch.full((4,), float(context.rank + 1))
    version = vector._version
    distributed.broadcast_tensors([vector], context)
    vectors = distributed.gather_to_main({"vector": vector, "version_moved": vector._version > version}, context)
    shards = distributed.gather_to_main([shard.start, shard.stop], context)
    distributed.barrier(context)

    if context.is_main:
        whole = Certificate.concat(parts)
        single = rp.certify(model, x, eps=0.1, guarantee="rtk:2")
        fields = ("pred", "certified", "k", "classes", "margin", "radius")
        result = {
            "world_size": context.world_size,
            "backend": context.backend,
            "shards": shards,
            "gathered_equals_single": {f: bool(torch.equal(getattr(whole, f), getattr(single, f))) for f in fields},
            "sums": sums,
            "single_certified": int(single.certified.sum()),
            "vectors": [v["vector"].tolist() for v in vectors],
            "versions_moved": [v["version_moved"] for v in vectors],
        }
        (out / "result.json").write_text(json.dumps(result))
    distributed.teardown(context)


def train_and_dump(out: Path, config_path: str) -> None:
    from relaxplug.training.config import load_config
    from relaxplug.training.trainer import train

    torch.set_num_threads(1)
    result = train(load_config(config_path), resume=True, progress=False)
    rank = os.environ.get("RANK", "0")
    torch.save({k: v.detach().cpu().clone() for k, v in result.model.state_dict().items()}, out / f"rank{rank}.pt")


if __name__ == "__main__":
    if len(sys.argv) > 2:
        train_and_dump(Path(sys.argv[1]), sys.argv[2])
    else:
        main(Path(sys.argv[1]))

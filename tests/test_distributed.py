"""relaxplug.distributed: one-process behaviour directly, two processes under torchrun (gloo)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from relaxplug import distributed
from relaxplug.distributed import DistributedContext, launched_by_torchrun, setup, shard_range

REPO = Path(__file__).resolve().parent.parent


def torchrun(nproc: int, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
    """Run ``python -m torch.distributed.run --standalone --nproc_per_node=nproc ARGS`` (CPU, one
    thread per process); fail with its output if it fails."""
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *args]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"torchrun failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def test_without_torchrun_everything_is_one_process():
    assert not launched_by_torchrun({})
    context = setup("cpu", environ={})
    assert (context.rank, context.world_size, context.backend, context.is_main) == (0, 1, None, True)
    assert distributed.gather_to_main(torch.ones(2), context)[0].tolist() == [1.0, 1.0]
    assert distributed.reduce_sums({"b": 2, "a": 1}, context) == {"a": 1.0, "b": 2.0}
    # torchrun with one process: no process group either
    one = setup("cpu", environ={"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0"})
    assert one.world_size == 1 and one.backend is None


@pytest.mark.parametrize("env, message", [
    ({"RANK": "x", "WORLD_SIZE": "2", "LOCAL_RANK": "0"}, "RANK='x' is not an integer"),
    ({"RANK": "2", "WORLD_SIZE": "2", "LOCAL_RANK": "0"}, "do not fit WORLD_SIZE=2"),
    ({"RANK": "-1", "WORLD_SIZE": "2", "LOCAL_RANK": "0"}, "negative"),
])
def test_bad_torchrun_variables_are_named(env, message):
    with pytest.raises(ValueError, match=message):
        setup("cpu", environ=env)


def test_shards_cover_every_item_once_in_order():
    for n in (0, 1, 5, 23, 64, 100):
        for world in (1, 2, 3, 8):
            for granularity in (1, 4, 32):
                blocks = [shard_range(n, DistributedContext(rank=r, world_size=world), granularity) for r in range(world)]
                assert [i for block in blocks for i in block] == list(range(n))
                assert all(block.start % granularity == 0 for block in blocks if len(block))  # whole batches
                lengths = [-(-len(block) // granularity) for block in blocks]
                assert max(lengths) - min(lengths) <= 1
    with pytest.raises(ValueError, match="n_items"):
        shard_range(-1, DistributedContext())
    with pytest.raises(ValueError, match="granularity"):
        shard_range(4, DistributedContext(), 0)


def test_per_process_batch_divides_the_global_batch():
    assert distributed.per_process_batch(64, DistributedContext(rank=1, world_size=4)) == 16
    with pytest.raises(ValueError, match="divisible by the number of processes"):
        distributed.per_process_batch(10, DistributedContext(rank=0, world_size=4))


def test_two_processes_gather_reduce_broadcast(tmp_path):
    torchrun(2, "tests/distributed_worker.py", str(tmp_path))
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["world_size"] == 2 and result["backend"] == "gloo"
    assert result["shards"] == [[0, 12], [12, 23]]
    assert all(result["gathered_equals_single"].values()), result["gathered_equals_single"]
    assert result["sums"] == {"certified": float(result["single_certified"]), "points": 23.0}
    assert result["vectors"] == [[1.0] * 4, [1.0] * 4]  # rank 0's values on both ranks
    assert result["versions_moved"] == [True, True]


@pytest.mark.gpu
def test_a_fixed_gpu_is_refused_for_several_processes():
    with pytest.raises(ValueError, match="names one GPU for 2 processes"):
        distributed.rank_device("cuda:0", 1, 2)
    assert distributed.rank_device("cuda", 0, 2) == torch.device("cuda", 0)
    with pytest.raises(ValueError, match="CUDA device"):
        distributed.rank_device("cuda", torch.cuda.device_count(), torch.cuda.device_count() + 1)

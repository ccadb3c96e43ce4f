"""relaxplug.distributed: one-process behaviour directly, two processes under torchrun (gloo)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from relaxplug import distributed
from relaxplug.distributed import DistributedContext, launched_by_torchrun, setup, shard_range
from relaxplug.models.checkpoint import load_checkpoint

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
    # one process: cuda:N is honoured, and refused with the cause when N is not visible
    assert distributed.rank_device("cuda:0", 0, 1) == torch.device("cuda", 0)
    with pytest.raises(ValueError, match="CUDA_VISIBLE_DEVICES"):
        distributed.rank_device(f"cuda:{torch.cuda.device_count()}", 0, 1)


# --- training under torchrun ------------------------------------------------------------------

RTK2 = """
name: ddp
dataset: digits
architecture: digits_cnn
guarantee: rtk:2
eps: 0.3
epochs: {epochs}
batch_size: 64
limit_train: {limit}
lr: "1e-3"
eps_ramp_epochs: 1
device: cpu
out_dir: {out}
gloro:
  loss: trades
  trades_lambda: "0.5"
  power_iterations: 2
"""


def _config(tmp_path: Path, name: str, epochs: int = 2, limit: int = 256) -> Path:
    out = tmp_path / name
    path = tmp_path / f"{name}.yaml"
    path.write_text(RTK2.format(epochs=epochs, limit=limit, out=out))
    return path


def _train(tmp_path: Path, name: str, nproc: int, **config) -> list[dict[str, torch.Tensor]]:
    """Train under torchrun with ``nproc`` processes; each rank's final state dict."""
    path = _config(tmp_path, name, **config)
    dumps = tmp_path / f"{name}-dumps"
    dumps.mkdir()
    torchrun(nproc, "tests/distributed_worker.py", str(dumps), str(path), timeout=300)
    return [torch.load(dumps / f"rank{r}.pt") for r in range(nproc)]


@pytest.fixture(scope="module")
def one_process_training(tmp_path_factory):
    """2 epochs of GloRo RT2 training, global batch 64, under torchrun with 1 process: its
    final state dict and its checkpoint."""
    where = tmp_path_factory.mktemp("one")
    return _train(where, "one", 1)[0], where / "one" / "checkpoint.pt"


@pytest.fixture(scope="module")
def one_process_run(one_process_training):
    return one_process_training[0]


def _max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


# Tolerance of the 2-process run against the 1-process run, 8 Adam steps at lr 1e-3 in float32:
# the two runs take the same steps on the same samples, but DDP sums two half-batch mean
# gradients where one process sums the whole batch, so gradients differ by float32 rounding
# (relative ~1e-7). Adam divides by the gradient's running RMS, so per step and weight the update
# moves by at most about lr * that relative difference, except where a gradient component is
# itself at rounding level and its sign can flip (up to 2 lr = 2e-3 per step on that weight).
# 1e-4 admits a few such rounding-level flips over 8 steps yet catches a wrong batch split
# (each process training on the whole batch, or B instead of B/2 per process), which moves
# weights by about lr per step (~1e-3) everywhere: the control below checks that it does.
WEIGHT_TOLERANCE = 1e-4


def test_two_processes_train_like_one_with_the_global_batch(tmp_path, one_process_run):
    ranks = _train(tmp_path, "two", 2)
    # the Lipschitz state (power-iteration vectors) and the weights are identical on both ranks
    assert ranks[0].keys() == ranks[1].keys()
    vectors = [k for k in ranks[0] if "lipschitz" in k]  # the power-iteration vectors (buffers)
    assert vectors, sorted(ranks[0])
    for key in ranks[0]:
        assert torch.equal(ranks[0][key], ranks[1][key]), key
    # what rank 0 saved is what it trained
    saved = load_checkpoint(tmp_path / "two" / "checkpoint.pt").model.state_dict()
    assert _max_difference(saved, ranks[0]) == 0.0
    difference = _max_difference(ranks[0], one_process_run)
    print(f"2 processes vs 1: largest weight difference {difference:.3g}")
    assert difference <= WEIGHT_TOLERANCE, difference


def test_the_weight_tolerance_catches_a_different_batch(tmp_path, one_process_run):
    """Control: the same run with each process loading the whole global batch (batch 128 in all)
    ends further from the one-process run than the tolerance."""
    path = _config(tmp_path, "control")
    path.write_text(path.read_text().replace("batch_size: 64", "batch_size: 128"))
    dumps = tmp_path / "control-dumps"
    dumps.mkdir()
    torchrun(2, "tests/distributed_worker.py", str(dumps), str(path), timeout=300)
    control = _max_difference(torch.load(dumps / "rank0.pt"), one_process_run)
    print(f"control (batch 128 per process) vs 1 process: {control:.3g}")
    assert control > 10 * WEIGHT_TOLERANCE


def test_killed_mid_epoch_resumes_with_another_process_count(tmp_path):
    """``torchrun -m relaxplug train`` with 2 processes, killed (SIGKILL, whole process group)
    right after its first checkpoint, resumes under 1 process and ends where an uninterrupted
    1-process run ends (same global batches: the data order depends on seed and epoch only).
    Six epochs leave five epochs of margin between the first checkpoint and the end of the run,
    so the kill lands mid-run however late the polling process is scheduled on a loaded machine."""
    epochs = 6
    reference = _train(tmp_path, "reference", 1, epochs=epochs)[0]
    path = _config(tmp_path, "killed", epochs=epochs)
    checkpoint = tmp_path / "killed" / "checkpoint.pt"
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "relaxplug", "train", str(path), "--quiet"]
    run = subprocess.Popen(command, cwd=REPO, env=env, start_new_session=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while not checkpoint.is_file() and run.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        os.killpg(run.pid, signal.SIGKILL)
    finally:
        run.wait(timeout=60)
    assert run.returncode == -signal.SIGKILL  # killed, not finished
    epoch = load_checkpoint(checkpoint).metadata["epoch"]
    assert 1 <= epoch < epochs  # killed mid-run
    done = torchrun(1, "-m", "relaxplug", "train", str(path), "--quiet", timeout=300)
    assert "trained ddp" in done.stdout
    resumed = load_checkpoint(checkpoint)
    assert resumed.metadata["epoch"] == epochs
    difference = _max_difference(resumed.model.state_dict(), reference)
    print(f"killed at epoch {epoch} under 2 processes, resumed under 1: largest difference {difference:.3g}")
    assert difference <= WEIGHT_TOLERANCE, difference


# --- certification under torchrun --------------------------------------------------------------


def test_two_process_eval_writes_the_one_process_json(tmp_path, one_process_training):
    """``eval`` sharded over 2 processes (batch 48: 13 batches of 599 points, 7 and 6 per rank)
    writes the same ``eval.json`` as 1 process, timing aside."""
    checkpoint = one_process_training[1]
    files = {}
    for nproc in (1, 2):
        out = tmp_path / f"eval{nproc}"
        done = torchrun(nproc, "-m", "relaxplug", "eval", "--checkpoint", str(checkpoint),
                        "--guarantee", "rtk:2", "--eps", "0.05", "--batch-size", "48", "--device", "cpu",
                        "--out", str(out), "--quiet", timeout=300)
        written = sorted(out.glob("*.json"))
        assert len(written) == 1, (written, done.stdout)
        files[nproc] = json.loads(written[0].read_text())
    for record in files.values():
        record.pop("seconds")
    assert files[1] == files[2]
    assert files[1]["points"] == 599 and 0 < files[1]["vra"] < 1 and 0 < files[1]["rejection_rate"] < 1


#: measured, not computed: times (summed over the ranks under torchrun) and peak memory
MEASURED = {"seconds", "setup_seconds", "attack_seconds", "certify_seconds", "peak_memory_mb_per_instance"}


def _computed(value):
    """``value`` (parsed JSON) without its :data:`MEASURED` fields, at any depth."""
    if isinstance(value, dict):
        return {key: _computed(item) for key, item in value.items() if key not in MEASURED}
    if isinstance(value, list):
        return [_computed(item) for item in value]
    return value


@pytest.mark.parametrize("command, options, written", [
    ("compare", ["--certifiers", "gloro,crown-ibp"], ("compare/compare.json", "compare/compare.png")),
    ("attack", ["--steps", "3", "--restarts", "1", "--targets", "2", "--autoattack-fast"], ("attack.json",)),
])
def test_two_process_compare_and_attack_write_the_one_process_json(tmp_path, one_process_training, command, options,
                                                                    written):
    """``compare`` and ``attack`` sharded over 2 processes (40 points in 5 batches or blocks of 8: 3 and 2
    per rank) write the JSON of a plain one-process run, measured times and memory aside, and rank 0
    alone writes (one ``wrote`` line)."""
    from relaxplug.cli import main

    checkpoint = one_process_training[1]
    common = ["--checkpoint", str(checkpoint), "--guarantee", "rtk:2", "--eps", "0.05", "--limit", "40",
              "--batch-size", "8", "--device", "cpu", "--quiet", *options]
    records = {}
    for nproc in (1, 2):
        out = tmp_path / f"{command}{nproc}"
        arguments = [command, *common, "--out", str(out / "compare" if command == "compare" else out)]
        if nproc == 1:
            assert main(arguments) == 0
        else:
            done = torchrun(2, "-m", "relaxplug", *arguments, timeout=300)
            assert done.stdout.count("wrote") == 1, done.stdout
        assert sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()) == sorted(written)
        records[nproc] = json.loads((out / written[0]).read_text())
    assert json.dumps(_computed(records[1]), sort_keys=True) == json.dumps(_computed(records[2]), sort_keys=True)
    if command == "compare":
        assert [r["certifier"] for r in records[1]["records"]] == ["gloro", "crown-ibp"]
        assert all(r["points"] == 40 for r in records[1]["records"])
        assert 0 < records[1]["records"][0]["vra"] < 1  # gloro (crown-ibp's IBP bounds certify none of these)
    else:
        assert records[1]["points"] == 40 and records[1]["certified"] > 0 and records[1]["broken"] == 0
        assert 0 < records[1]["empirical_robust_accuracy"] < 1 and "autoattack_accuracy" in records[1]


CROWN_IBP = """
name: ddp-crown
dataset: digits
architecture: mlp
method: crown-ibp
guarantee: standard
eps: 0.1
norm: inf
epochs: 1
batch_size: 64
limit_train: 256
lr: "1e-3"
eps_ramp_epochs: 1
device: cpu
out_dir: {out}
crown-ibp:
  warmup_epochs: 0
  kappa: "1 -> 0"
  beta: "1 -> 0"
"""


def test_crown_ibp_under_ddp_trains_like_one_process(tmp_path):
    """CROWN-IBP (auto_LiRPA bounds on each rank's half batch, DDP-averaged gradients): 2 processes
    end where 1 process ends, within the same tolerance and for the same reason."""
    states = {}
    for nproc in (1, 2):
        path = tmp_path / f"crown{nproc}.yaml"
        path.write_text(CROWN_IBP.format(out=tmp_path / f"crown{nproc}"))
        dumps = tmp_path / f"crown{nproc}-dumps"
        dumps.mkdir()
        torchrun(nproc, "tests/distributed_worker.py", str(dumps), str(path), timeout=300)
        states[nproc] = [torch.load(dumps / f"rank{r}.pt") for r in range(nproc)]
    assert _max_difference(states[2][0], states[2][1]) == 0.0
    difference = _max_difference(states[2][0], states[1][0])
    assert difference <= WEIGHT_TOLERANCE, difference


# --- bf16 and GPUs ------------------------------------------------------------------------------


def test_bf16_is_refused_off_cuda_and_for_crown_ibp(tmp_path):
    from relaxplug.training.config import load_config
    from relaxplug.training.trainer import train

    path = _config(tmp_path, "bf16-cpu", epochs=1, limit=64)
    with pytest.raises(ValueError, match="bf16 autocast is for CUDA training; the run is on cpu"):
        train(load_config(path, ["bf16=true"]), progress=False)
    crown = tmp_path / "crown.yaml"
    crown.write_text(CROWN_IBP.format(out=tmp_path / "crown"))
    with pytest.raises(ValueError, match="CROWN-IBP's bounds"):
        load_config(crown, ["bf16=true"])
    with pytest.raises(ValueError, match="bf16 must be true or false"):
        load_config(path, ["bf16=1"])


@pytest.mark.gpu
def test_bf16_training_on_cuda(tmp_path):
    """bf16 autocast on CUDA: trains, the weights stay float32 and finite, and the bf16 run ends
    near the float32 run (bf16 keeps 8 mantissa bits: logits differ by ~1e-2 relative)."""
    from relaxplug.training.config import load_config
    from relaxplug.training.trainer import train

    runs = {}
    for bf16 in (False, True):
        path = _config(tmp_path, f"cuda-bf16-{bf16}", epochs=1, limit=256)
        result = train(load_config(path, ["device=cuda", f"bf16={str(bf16).lower()}"]), progress=False)
        runs[bf16] = result
    state = runs[True].model.state_dict()
    assert all(v.dtype == torch.float32 and bool(torch.isfinite(v).all()) for v in state.values())
    assert _max_difference(state, runs[False].model.state_dict()) > 0  # autocast did take effect
    losses = [runs[b].history[-1]["loss"] for b in (False, True)]
    assert abs(losses[0] - losses[1]) < 0.05 * abs(losses[0]), losses


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="NCCL with 2 processes needs 2 GPUs")
def test_nccl_two_gpus_train_and_eval(tmp_path):
    env_cuda = dict(os.environ, OMP_NUM_THREADS="1")
    path = _config(tmp_path, "nccl", epochs=1, limit=256)
    path.write_text(path.read_text().replace("device: cpu", "device: cuda"))
    dumps = tmp_path / "nccl-dumps"
    dumps.mkdir()
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "tests/distributed_worker.py", str(dumps), str(path)]
    done = subprocess.run(command, cwd=REPO, env=env_cuda, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [torch.load(dumps / f"rank{r}.pt") for r in range(2)]
    assert _max_difference(ranks[0], ranks[1]) == 0.0  # weights and Lipschitz state agree across GPUs
    files = {}
    for nproc in (1, 2):
        out = tmp_path / f"nccl-eval{nproc}"
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                   "-m", "relaxplug", "eval", "--checkpoint", str(tmp_path / "nccl" / "checkpoint.pt"),
                   "--guarantee", "rtk:2", "--eps", "0.05", "--batch-size", "48", "--device", "cuda",
                   "--out", str(out), "--quiet"]
        done = subprocess.run(command, cwd=REPO, env=env_cuda, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        files[nproc] = json.loads(next(out.glob("*.json")).read_text())
        files[nproc].pop("seconds")
    assert files[1] == files[2]
    # compare and attack sharded over the 2 GPUs (NCCL gathers) write the 1-GPU JSON
    for command, options, name in (("compare", ["--certifiers", "gloro,crown-ibp"], "compare.json"),
                                   ("attack", ["--steps", "3", "--restarts", "1", "--autoattack-fast"], "attack.json")):
        records = {}
        for nproc in (1, 2):
            out = tmp_path / f"nccl-{command}{nproc}"
            command_line = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                            "-m", "relaxplug", command, "--checkpoint", str(tmp_path / "nccl" / "checkpoint.pt"),
                            "--guarantee", "rtk:2", "--eps", "0.05", "--limit", "40", "--batch-size", "8",
                            "--device", "cuda", "--out", str(out), "--quiet", *options]
            done = subprocess.run(command_line, cwd=REPO, env=env_cuda, capture_output=True, text=True, timeout=300)
            assert done.returncode == 0, done.stderr[-3000:]
            records[nproc] = _computed(json.loads((out / name).read_text()))
        if command == "attack":
            # the attacks backpropagate to the input, where cuDNN may use non-deterministic kernels
            # (docs/distributed.md): compare what forward passes decide, and that nothing broke
            fields = ("points", "clean_accuracy", "certifier", "vra", "certified", "attacked", "broken")
            records = {nproc: {key: record[key] for key in fields} for nproc, record in records.items()}
            assert records[1]["broken"] == 0
        assert json.dumps(records[1], sort_keys=True) == json.dumps(records[2], sort_keys=True), command


def test_commands_that_do_not_shard_are_refused_under_several_processes(monkeypatch, capsys):
    from relaxplug.cli import main

    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["list"]) == 2
    assert "'relaxplug list' runs in one process, torchrun started 2" in capsys.readouterr().err
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert main(["list"]) == 0

"""Output directories and files: writability checked first, one run per directory, atomic writes."""

import os
import subprocess
import sys

import pytest

from relaxplug.outputs import (
    LOCK_NAME,
    OutputDirInUse,
    OutputError,
    atomic_write,
    check_output_dir,
    check_output_file,
    lock_output_dir,
    remove_orphans,
)

HOLD = "import sys; from relaxplug.outputs import lock_output_dir\nwith lock_output_dir(sys.argv[1]):\n    print('held', flush=True); sys.stdin.read()"


def test_check_output_dir_creates_and_refuses(tmp_path):
    assert check_output_dir(tmp_path / "a" / "b").is_dir()
    assert list((tmp_path / "a" / "b").iterdir()) == []  # the probe file is gone
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="is an existing file, not a directory"):
        check_output_dir(tmp_path / "file")
    with pytest.raises(OutputError, match="cannot be created or written"):
        check_output_dir(tmp_path / "file" / "below")
    with pytest.raises(OutputError, match="is an existing directory, not a file"):
        check_output_file(tmp_path / "a")


def test_a_directory_locked_by_another_process_is_refused_naming_it(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(OutputDirInUse, match=rf"in use by another relaxplug run \(pid {holder.pid}\)"):
            with lock_output_dir(tmp_path):
                pass
    finally:
        holder.communicate("", timeout=60)
    with lock_output_dir(tmp_path):  # released when its holder exits; the stale file does not block
        assert (tmp_path / LOCK_NAME).read_text().strip() == str(os.getpid())


def test_atomic_write_keeps_the_old_file_on_failure_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "r.json"
    atomic_write(target, lambda h: h.write(b"old"))

    def fail(handle):
        handle.write(b"half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match=r"cannot write file '.*r.json': No space left on device"):
        atomic_write(target, fail)
    assert target.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]


def test_remove_orphans_spares_live_writers(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout.strip()
    orphan = tmp_path / f".r.json.{dead}.x1.tmp"
    live = tmp_path / f".r.json.{os.getppid()}.x2.tmp"  # our parent is alive: its write is in progress
    other = tmp_path / f".s.json.{dead}.x3.tmp"
    for path in (orphan, live, other):
        path.write_text("")
    assert remove_orphans(tmp_path, "r.json") == [orphan]
    assert live.exists() and other.exists()

"""Writes that fail for the storage's sake (shared/atomic.py, shared/storage.py): a real
file-size limit (`RLIMIT_FSIZE`, what `ulimit -f` sets: the kernel refuses the write with
EFBIG) in a child process, so no privileges are needed; the target keeps its old content and
no temporary file is left."""

import errno
import subprocess
import sys
from pathlib import Path

import pytest

from shared.atomic import WriteError, append_line_atomic, read_lines, write_bytes_atomic
from shared.storage import describe, exits_on_storage_errors, room_problem, storage_error

REPO = Path(__file__).resolve().parents[3]

LIMITED = """
import resource, sys
from pathlib import Path
from shared.atomic import append_line_atomic, write_bytes_atomic, write_folder_atomic
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
folder = Path(sys.argv[1])
for name, write in [
    ("file", lambda: write_bytes_atomic(folder / "ckpt.pt", b"n" * 10000)),
    ("append", lambda: append_line_atomic(folder / "metrics.jsonl", "x" * 5000)),
    ("folder", lambda: write_folder_atomic(folder / "adapter", {"w": b"n" * 10000})),
]:
    try:
        write()
        print(name, "written")
    except OSError as err:
        print(name, type(err).__name__, err.errno, err.filename)
"""


def test_a_refused_write_keeps_the_old_file_and_names_the_target(tmp_path):
    write_bytes_atomic(tmp_path / "ckpt.pt", b"old")
    append_line_atomic(tmp_path / "metrics.jsonl", '{"step": 1}')
    write_bytes_atomic(tmp_path / "adapter" / "w", b"old")
    out = subprocess.run(
        [sys.executable, "-c", LIMITED, str(tmp_path)],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
        timeout=60,
    )
    lines = out.stdout.splitlines()
    assert lines == [
        f"file WriteError {errno.EFBIG} {tmp_path / 'ckpt.pt'}",
        f"append WriteError {errno.EFBIG} {tmp_path / 'metrics.jsonl'}",
        f"folder WriteError {errno.EFBIG} {tmp_path / 'adapter'}",
    ], out.stderr
    assert (tmp_path / "ckpt.pt").read_bytes() == b"old"
    # the limit let 4096 bytes of the line through: they were cut off again
    assert (tmp_path / "metrics.jsonl").read_text() == '{"step": 1}\n'
    assert (tmp_path / "adapter" / "w").read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter", "ckpt.pt", "metrics.jsonl"]


def test_read_lines_skips_a_half_written_last_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    append_line_atomic(path, '{"step": 1}')
    with open(path, "a") as f:
        f.write('{"step": 2, "rew')  # a crash mid-write
    assert read_lines(path) == ['{"step": 1}']
    assert read_lines(tmp_path / "none.jsonl") == []


def test_storage_errors_are_found_behind_other_errors_and_described():
    fault = WriteError(errno.ENOSPC, "No space left on device", "/runs/a/last.pt")
    try:
        try:
            raise fault
        except OSError as err:
            raise RuntimeError("the step failed") from err
    except RuntimeError as wrapped:
        assert storage_error(wrapped) is fault
    assert storage_error(ValueError("x")) is None
    assert storage_error(OSError(errno.ENOENT, "gone")) is None  # a bug, not the disk
    assert describe(fault) == "cannot write /runs/a/last.pt ([Errno 28] No space left on device)"


def test_an_entry_point_ends_a_storage_fault_in_one_line(capsys):
    @exits_on_storage_errors("art-x", "nothing is lost")
    def main() -> int:
        raise WriteError(errno.EROFS, "Read-only file system", "/ro/bench.json")

    assert main() == 1
    err = capsys.readouterr().err
    assert err == (
        "art-x: stopped: cannot write /ro/bench.json ([Errno 30] Read-only file system); "
        "nothing is lost\n"
    )

    @exits_on_storage_errors("art-x")
    def buggy() -> int:
        raise OSError(errno.ENOENT, "a bug keeps its traceback")

    with pytest.raises(OSError, match="a bug"):
        buggy()


def test_room_is_checked_against_what_is_needed(tmp_path):
    assert room_problem(tmp_path, 1, "a run") is None
    problem = room_problem(tmp_path / "not" / "yet", 2**62, "this run (3 checkpoints)")
    assert problem.startswith(f"the output folder {tmp_path / 'not' / 'yet'} has ")
    assert "this run (3 checkpoints) needs" in problem and "set output_dir" in problem

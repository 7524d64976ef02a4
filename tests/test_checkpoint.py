"""The checkpoint file: round trip, and every way a file can be bad is refused clearly."""

import json
import os
import struct

import pytest
import torch

from impresslearn import _atomic
from impresslearn import checkpoint as ckpt
from impresslearn.checkpoint import CheckpointError, load_checkpoint, save_checkpoint, weights_sha256


def _tensors():
    g = torch.Generator().manual_seed(0)
    base = torch.randn(7, 5, generator=g)
    return {
        "weights/0": base,
        "view_of_weights": base[2:4],  # shares storage with weights/0
        "bank/0": torch.randint(0, 256, (3, 13), dtype=torch.uint8, generator=g),
        "alpha": torch.randn(9, 3, generator=g).to(torch.bfloat16),
        "scalar": torch.tensor(2.5, dtype=torch.float64),
        "empty": torch.zeros(0, 4),
        "mask": torch.tensor([True, False, True]),
    }


META = {"backbone": {"arch": "lenet300", "seed": 0}, "density": 0.1, "tasks": [{"name": "t0", "kind": "basis"}],
        "nan_ok": None}


def _save(tmp_path, name="a.ckpt"):
    path = tmp_path / name
    save_checkpoint(path, _tensors(), META)
    return path


def test_round_trip_is_bit_exact(tmp_path):
    path = _save(tmp_path)
    tensors, metadata = load_checkpoint(path)
    expected = _tensors()
    assert set(tensors) == set(expected)
    for name, t in expected.items():
        assert tensors[name].dtype == t.dtype and tensors[name].shape == t.shape, name
        assert torch.equal(tensors[name], t), name
    assert metadata == META
    assert os.listdir(tmp_path) == ["a.ckpt"]  # no temp file left


def test_file_is_plain_safetensors_with_version_and_checksums(tmp_path):
    from safetensors import safe_open

    path = _save(tmp_path)
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        assert torch.equal(f.get_tensor("bank/0"), _tensors()["bank/0"])
    assert meta["format"] == "impresslearn-checkpoint" and meta["format_version"] == "1"
    digests = json.loads(meta["sha256"])
    assert digests["bank/0"] == ckpt.tensor_sha256(_tensors()["bank/0"])


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        load_checkpoint(tmp_path / "nothing.ckpt")


@pytest.mark.parametrize("keep", [0, 5, 8, 40, -1])
def test_truncated_file_is_refused_with_its_name(tmp_path, keep):
    path = _save(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[:keep] if keep >= 0 else data[:-1])
    with pytest.raises(CheckpointError, match="truncated") as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)


def test_flipped_byte_in_tensor_data_fails_checksum(tmp_path):
    path = _save(tmp_path)
    data = bytearray(path.read_bytes())
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    start = 8 + n + header["bank/0"]["data_offsets"][0]
    data[start + 3] ^= 0x10
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"SHA-256 mismatch for tensor\(s\) bank/0"):
        load_checkpoint(path)


def test_damaged_header_is_refused(tmp_path):
    path = _save(tmp_path)
    data = bytearray(path.read_bytes())
    data[9] = ord("}")  # breaks the JSON right after its opening brace
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="damaged header"):
        load_checkpoint(path)


def test_header_length_beyond_file_is_refused(tmp_path):
    path = _save(tmp_path)
    data = bytearray(path.read_bytes())
    data[:8] = struct.pack("<Q", len(data) * 2)
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="damaged or truncated header"):
        load_checkpoint(path)


def _rewrite_metadata(path, **changes):
    from safetensors.torch import load_file, save_file
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata())
    meta.update(changes)
    save_file(load_file(str(path)), str(path), metadata=meta)


def test_unsupported_version_is_refused(tmp_path):
    path = _save(tmp_path)
    _rewrite_metadata(path, format_version="99")
    with pytest.raises(CheckpointError, match="format version '99' is not supported"):
        load_checkpoint(path)


def test_foreign_safetensors_file_is_refused(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "model.safetensors"
    save_file({"w": torch.zeros(3)}, str(path))
    with pytest.raises(CheckpointError, match="not an impresslearn checkpoint"):
        load_checkpoint(path)


def test_interrupted_save_keeps_previous_checkpoint_and_leaves_no_temp(tmp_path, monkeypatch):
    path = _save(tmp_path)
    before = path.read_bytes()

    def write_half_then_fail(f, data):
        f.write(memoryview(data)[: len(data) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(_atomic, "_write_all", write_half_then_fail)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(path, {"other": torch.ones(100)}, {"new": True})
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["a.ckpt"]
    tensors, metadata = load_checkpoint(path)
    assert metadata == META


def test_interrupt_during_rename_leaves_no_temp(tmp_path, monkeypatch):
    def fail_replace(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(_atomic.os, "replace", fail_replace)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path / "b.ckpt", {"x": torch.ones(2)}, {})
    assert os.listdir(tmp_path) == []


def test_bad_inputs_are_refused_before_writing(tmp_path):
    with pytest.raises(TypeError, match="not JSON-serialisable"):
        save_checkpoint(tmp_path / "c.ckpt", {"x": torch.ones(2)}, {"f": object()})
    with pytest.raises(TypeError, match="not a torch.Tensor"):
        save_checkpoint(tmp_path / "c.ckpt", {"x": [1, 2]}, {})
    with pytest.raises(FileNotFoundError, match="does not exist"):
        save_checkpoint(tmp_path / "no" / "c.ckpt", {"x": torch.ones(2)}, {})
    assert os.listdir(tmp_path) == []


def test_weights_sha256_sees_values_dtype_shape_and_order():
    a, b = torch.arange(6.0), torch.ones(3)
    h = weights_sha256([a, b])
    assert h == weights_sha256([a.clone(), b.clone()])
    assert h != weights_sha256([b, a])
    assert h != weights_sha256([a.view(2, 3), b])
    assert h != weights_sha256([a.double(), b])
    c = a.clone()
    c[5] = torch.nextafter(c[5], torch.tensor(10.0))
    assert h != weights_sha256([c, b])
    # Known answer: pins the hash definition so a silent change cannot go unnoticed.
    assert weights_sha256([torch.zeros(2, dtype=torch.uint8)]) == __import__("hashlib").sha256(
        b"uint8[2];\x00\x00").hexdigest()


# ----------------------------------------------------------------------------- temp files and modes

_KILLED_WRITER = r"""
import os, sys, time
from impresslearn import _atomic, checkpoint
import torch

def write_half_then_hang(f, data):
    f.write(memoryview(data)[: len(data) // 2])
    f.flush()
    print("half written", flush=True)
    time.sleep(60)  # killed here, between write and rename

_atomic._write_all = write_half_then_hang
checkpoint.save_checkpoint(sys.argv[1], {"x": torch.arange(1 << 20, dtype=torch.float32)}, {"from": "killed"})
"""


def _start_writer(tmp_path, target):
    import subprocess
    import sys

    proc = subprocess.Popen(
        [sys.executable, "-c", _KILLED_WRITER, str(target)], stdout=subprocess.PIPE, text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    line = proc.stdout.readline()
    assert line.strip() == "half written", line
    return proc


def test_sigkill_mid_write_keeps_the_old_file_and_the_next_save_removes_the_temp(tmp_path):
    import signal

    path = _save(tmp_path)
    before = path.read_bytes()
    proc = _start_writer(tmp_path, path)
    try:
        temps = [n for n in os.listdir(tmp_path) if n != "a.ckpt"]
        assert len(temps) == 1 and temps[0].startswith(".a.ckpt.") and f"-{proc.pid}." in temps[0], temps
        assert (tmp_path / temps[0]).stat().st_size >= 2 << 20  # half of a 4 MiB tensor: the write was under way
        assert _atomic.stale_temporaries(path) == []  # its writer is alive: not stale
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["a.ckpt", temps[0]]  # nothing could remove it on SIGKILL
    assert _atomic.stale_temporaries(path) == [tmp_path / temps[0]]
    save_checkpoint(path, {"y": torch.ones(3)}, {"after": True})
    assert os.listdir(tmp_path) == ["a.ckpt"]
    assert load_checkpoint(path)[1] == {"after": True}


def test_only_dead_writers_temporaries_of_the_same_target_are_removed(tmp_path):
    import subprocess
    import sys

    host = _atomic._host()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    keep = [
        f".a.ckpt.{host}-{os.getpid()}.0123456789ab.tmp",  # this process: maybe another thread writing
        f".a.ckpt.{host}-1.0123456789ab.tmp",  # pid 1 is alive
        f".a.ckpt.otherhost-{dead_pid}.0123456789ab.tmp",  # another host on a shared file system
        f".b.ckpt.{host}-{dead_pid}.0123456789ab.tmp",  # another target
        f".a.ckpt.{host}-{dead_pid}.notours.tmp",  # not the writer's pattern
        ".a.ckpt.abc123.tmp",  # the old mkstemp pattern: no pid to check
        "a.ckpt.tmp",
    ]
    gone = f".a.ckpt.{host}-{dead_pid}.0123456789ab.tmp"
    for name in keep + [gone]:
        (tmp_path / name).write_bytes(b"partial")
    save_checkpoint(tmp_path / "a.ckpt", {"x": torch.ones(2)}, {})
    assert sorted(os.listdir(tmp_path)) == sorted(keep + ["a.ckpt"])


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_files_get_the_mode_the_umask_gives(tmp_path, umask):
    old = os.umask(umask)
    try:
        save_checkpoint(tmp_path / "m.ckpt", {"x": torch.ones(2)}, {})
        _atomic.atomic_write(tmp_path / "m.json", "{}")
    finally:
        os.umask(old)
    for name in ("m.ckpt", "m.json"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~umask, name

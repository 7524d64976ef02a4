"""The checkpoint file: round trip, and every way a file can be bad is refused clearly."""

import json
import os
import struct
import warnings
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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
    assert meta["format"] == "impresslearn-checkpoint" and meta["format_version"] == "2"
    digests = json.loads(meta["sha256"])
    assert digests["bank/0"] == ckpt.tensor_sha256(_tensors()["bank/0"])
    header = ckpt.read_checkpoint_header(path)
    layout = {name: (e["dtype"], e["shape"]) for name, e in header.items() if name != "__metadata__"}
    assert layout["alpha"] == ("BF16", [9, 3])
    assert meta["header_sha256"] == ckpt.header_sha256("2", meta["metadata"], meta["sha256"], layout)


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


def test_a_bare_file_name_is_written_in_the_working_folder_and_its_dead_temporaries_removed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    dead = f".a.json.{_atomic._host()}-{2**22 + 1}.0123456789ab.tmp"  # past Linux's pid_max: no such writer
    (tmp_path / dead).write_bytes(b"partial")
    assert _atomic.stale_temporaries("a.json") == [Path(dead)]
    _atomic.atomic_write("a.json", "{}")
    assert os.listdir(tmp_path) == ["a.json"] and (tmp_path / "a.json").read_text() == "{}"
    with pytest.raises(FileNotFoundError, match="cannot write missing/a.json: folder missing does not exist"):
        _atomic.atomic_write("missing/a.json", "{}")
    _atomic.atomic_write("made/a.json", "{}", make_parents=True)
    assert (tmp_path / "made" / "a.json").read_text() == "{}"


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



# ----------------------------------------------------------------------------- the header checksum (format 2)

# Metadata shaped like the learner's: the fields whose one-bit flips used to load silently.
TASKS_META = {
    "tasks": [
        {"name": "b0", "kind": "basis", "bn_slot": 0, "extra_index": None},
        {"name": "b1", "kind": "hybrid", "bn_slot": 1, "extra_index": 1},
    ],
}


def _split(data: bytes) -> tuple[int, bytes]:
    (n,) = struct.unpack("<Q", data[:8])
    return n, data[8 : 8 + n]


def _replace_in_header(path, old: bytes, new: bytes) -> None:
    """Replace the one occurrence of ``old`` in the JSON header by ``new`` (same length)."""
    assert len(old) == len(new)
    data = path.read_bytes()
    n, header = _split(data)
    assert header.count(old) == 1, (old, header)
    path.write_bytes(data[:8] + header.replace(old, new) + data[8 + n :])


def _save_tasks(tmp_path):
    path = tmp_path / "t.ckpt"
    save_checkpoint(path, {"tasks.0": torch.ones(9, 3), "tasks.1": torch.full((9, 3), 0.5)}, TASKS_META)
    return path


@pytest.mark.parametrize(
    "old, new",
    [
        (rb'bn_slot\": 1', rb'bn_slot\": 0'),  # task b1 would read b0's BN statistics
        (rb'extra_index\": 1', rb'extra_index\": 0'),  # b1 would use another last-layer mask
        (rb'\"b1\"', rb'\"b0\"'),  # b1 vanishes, b0 gets b1's coefficients
        (rb'bn_slot\": 1', rb'bn_slot\": 9'),  # out of range: used to fail only at predict
    ],
    ids=["bn_slot", "extra_index", "task_name", "bn_slot_range"],
)
def test_changed_metadata_values_are_refused(tmp_path, old, new):
    path = _save_tasks(tmp_path)
    load_checkpoint(path)
    _replace_in_header(path, old, new)
    with pytest.raises(CheckpointError, match="damaged header, SHA-256 mismatch"):
        load_checkpoint(path)


@pytest.mark.parametrize(
    "old, new",
    [
        (b'"dtype":"F32","shape":[9,3]', b'"dtype":"I32","shape":[9,3]'),  # same bytes read as int32
        (b'"dtype":"F32","shape":[9,3]', b'"dtype":"F32","shape":[3,9]'),  # same byte count, transposed
    ],
    ids=["dtype", "shape"],
)
def test_changed_tensor_dtype_or_shape_is_refused(tmp_path, old, new):
    path = _save_tasks(tmp_path)
    data = path.read_bytes()
    n, header = _split(data)
    first = header.index(old)  # change only the first tensor's entry
    path.write_bytes(data[:8] + header[:first] + new + header[first + len(old) :] + data[8 + n :])
    with pytest.raises(CheckpointError, match="damaged header, SHA-256 mismatch"):
        load_checkpoint(path)


def test_missing_header_checksum_is_refused(tmp_path):
    path = _save_tasks(tmp_path)
    _replace_in_header(path, b'"header_sha256"', b'"header_sha257"')
    with pytest.raises(CheckpointError, match="checksum or metadata is missing"):
        load_checkpoint(path)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(where=st.floats(0.0, 1.0, exclude_max=True), bit=st.integers(0, 7), in_header=st.booleans())
def test_any_one_bit_flip_is_refused(tmp_path, where, bit, in_header):
    """A flipped bit anywhere in the file (header length, JSON header, padding, tensor data) is refused."""
    path = tmp_path / "flip.ckpt"
    save_checkpoint(path, {"tasks.0": torch.ones(9, 3), "bank": torch.arange(40, dtype=torch.uint8)}, TASKS_META)
    data = bytearray(path.read_bytes())
    n, _ = _split(bytes(data))
    start, stop = (0, 8 + n) if in_header else (8 + n, len(data))
    pos = start + int(where * (stop - start))
    data[pos] ^= 1 << bit
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError):
        load_checkpoint(path)


# ----------------------------------------------------------------------------- absurd sizes


def _raw_file(path, entries: dict, data: bytes, meta=None) -> None:
    """A safetensors file written by hand, so its header can say anything."""
    header = dict(entries)
    if meta is not None:
        header["__metadata__"] = meta
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)


@pytest.mark.parametrize(
    "entry, message",
    [
        ({"dtype": "F32", "shape": [2**20, 2**20, 2**20], "data_offsets": [0, 16]}, "declares F32"),  # 4 EiB
        ({"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 8]}, "holds 8 bytes"),
        ({"dtype": "F32", "shape": [-4], "data_offsets": [0, 16]}, "damaged shape"),
        ({"dtype": "F32", "shape": [True, 4], "data_offsets": [0, 16]}, "damaged shape"),
        ({"dtype": "F32", "shape": "4", "data_offsets": [0, 16]}, "damaged shape"),
        ({"dtype": "Q32", "shape": [4], "data_offsets": [0, 16]}, "unknown dtype 'Q32'"),
        ({"dtype": "F32", "shape": [4], "data_offsets": [-16, 16]}, "damaged header entry"),
        ({"dtype": "F32", "shape": [4], "data_offsets": [0, 2**62]}, "truncated"),
    ],
)
def test_declared_sizes_are_checked_against_the_file_before_allocating(tmp_path, entry, message):
    path = tmp_path / "big.ckpt"
    _raw_file(path, {"w": entry}, bytes(16), {"format": "impresslearn-checkpoint", "format_version": "2"})
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(path)


# ----------------------------------------------------------------------------- format 1 files


def _save_version_1(path, tensors, metadata) -> None:
    """The version-1 writer, as it was: no header checksum."""
    from safetensors.torch import save as safetensors_save

    tensors = {name: t.contiguous() for name, t in tensors.items()}
    header = {
        "format": "impresslearn-checkpoint",
        "format_version": "1",
        "sha256": json.dumps({name: ckpt.tensor_sha256(t) for name, t in tensors.items()}, sort_keys=True),
        "metadata": json.dumps(metadata, sort_keys=True, allow_nan=True),
    }
    path.write_bytes(safetensors_save(tensors, metadata=header))


def test_version_1_file_loads_with_a_warning_and_upgrades(tmp_path):
    path = tmp_path / "old.ckpt"
    tensors = {"tasks.0": torch.ones(9, 3), "bank": torch.arange(40, dtype=torch.uint8)}
    _save_version_1(path, tensors, TASKS_META)
    with pytest.warns(ckpt.UncheckedHeaderWarning, match="upgrade_checkpoint"):
        loaded, metadata = load_checkpoint(path)
    assert metadata == TASKS_META and all(torch.equal(loaded[k], tensors[k]) for k in tensors)

    ckpt.upgrade_checkpoint(path)
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        assert f.metadata()["format_version"] == "2"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded, metadata = load_checkpoint(path)
    assert metadata == TASKS_META and all(torch.equal(loaded[k], tensors[k]) for k in tensors)
    _replace_in_header(path, rb'bn_slot\": 1', rb'bn_slot\": 0')  # now protected
    with pytest.raises(CheckpointError, match="damaged header"):
        load_checkpoint(path)


def test_version_1_tensor_data_is_still_checked(tmp_path):
    path = tmp_path / "old.ckpt"
    _save_version_1(path, {"bank": torch.arange(40, dtype=torch.uint8)}, {})
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.warns(ckpt.UncheckedHeaderWarning), pytest.raises(CheckpointError, match="SHA-256 mismatch for tensor"):
        load_checkpoint(path)


def test_dtypes_safetensors_cannot_store_are_refused_before_writing(tmp_path):
    with pytest.raises(TypeError, match="complex128"):
        save_checkpoint(tmp_path / "c.ckpt", {"z": torch.zeros(2, dtype=torch.complex128)}, {})
    assert os.listdir(tmp_path) == []


# ----------------------------------------------------------------------------- through the learner


def _small_learner():
    from impresslearn import ImpressLearner
    from impresslearn.models import create_model

    model = create_model("lenet300", num_classes=3, seed=0, in_features=6, hidden=(5, 4))
    learner = ImpressLearner(model, density=0.5)
    learner.add_random_masks(3, seed=0)
    learner.register_task("t0", torch.full((3, learner.num_layers), 1 / 3))
    learner.register_task("t1", torch.full((3, learner.num_layers), 0.25))
    return learner


def test_learner_checkpoint_with_a_changed_header_value_is_refused(tmp_path):
    """End to end through ImpressLearner.save / load: the checksum guards the learner's own metadata."""
    from impresslearn import ImpressLearner

    path = tmp_path / "learner.ckpt"
    _small_learner().save(path)
    ImpressLearner.load(path)
    # hidden=(5, 4) -> (5, 6): a one-bit flip in the backbone spec (0x34 '4' -> 0x36 '6')
    _replace_in_header(path, rb"5, 4]", rb"5, 6]")
    with pytest.raises(CheckpointError, match="damaged header"):
        ImpressLearner.load(path)


def test_learner_checkpoint_in_format_1_still_loads(tmp_path):
    from impresslearn import ImpressLearner

    learner = _small_learner()
    path = tmp_path / "learner.ckpt"
    learner.save(path)
    _save_version_1(path, *load_checkpoint(path))  # the same learner, as the format-1 writer wrote it
    with pytest.warns(ckpt.UncheckedHeaderWarning):
        loaded = ImpressLearner.load(path)
    assert list(loaded.tasks) == ["t0", "t1"]
    for name in ("t0", "t1"):
        assert torch.equal(loaded.tasks[name].coefficients, learner.tasks[name].coefficients)

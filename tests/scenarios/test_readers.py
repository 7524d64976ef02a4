"""MNIST, CIFAR-100 and ImageNet readers on tiny files generated in the torchvision layouts."""

import gzip
import pickle
import struct

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from impresslearn.scenarios import BatchLoader, DataNotFoundError, create_scenario
from impresslearn.scenarios import _readers
from impresslearn.scenarios._base import label_remap
from impresslearn.scenarios.cifar import CIFAR100_MEAN, CIFAR100_STD, RandomCropFlip
from impresslearn.scenarios.mnist import NORMALIZATION


@pytest.fixture(autouse=True)
def _empty_default_root(tmp_path, monkeypatch):
    monkeypatch.setenv(_readers.DATA_ROOT_ENV, str(tmp_path / "default-root"))


def write_idx(path, array: np.ndarray, compress: bool):
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    if compress:
        path = path.with_name(path.name + ".gz")
        data = gzip.compress(data)
    path.write_bytes(data)


def make_mnist(root, n_train=60, n_test=30, compress=True):
    rng = np.random.default_rng(0)
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    out = {}
    for split, prefix, n in (("train", "train", n_train), ("test", "t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = np.arange(n) % 10
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images, compress)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels, compress)
        out[split] = (images, labels)
    return out


@pytest.mark.parametrize("compress", [True, False])
def test_mnist_idx_files_in_torchvision_layout(tmp_path, compress):
    data = make_mnist(tmp_path, compress=compress)
    mean, std = NORMALIZATION["mnist"]
    sc = create_scenario("permuted_mnist", num_tasks=2, root=tmp_path)
    task = sc.task(1)
    images, labels = data["test"]
    expected = (torch.from_numpy(images.astype(np.float32)).reshape(30, -1)[:, sc.permutation(1)] / 255 - mean) / std
    torch.testing.assert_close(task.test.inputs.reshape(30, -1), expected, rtol=0, atol=1e-6)
    assert torch.equal(task.test.targets, torch.from_numpy(labels))
    split = create_scenario("split_mnist", root=tmp_path)
    assert split.task(4).train.targets.tolist() == [0, 1] * 6  # labels 8, 9 of 60 cycling labels
    rotated = create_scenario("rotated_mnist", num_tasks=2, root=tmp_path)
    assert torch.equal(rotated.task(1).train.inputs, torch.rot90(rotated.task(0).train.inputs, 2, dims=(-2, -1)))


def test_damaged_idx_files_are_named(tmp_path):
    bad = tmp_path / "x-idx1-ubyte"
    bad.write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(ValueError, match="bad magic"):
        _readers.read_idx(bad)
    write_idx(bad, np.zeros(10), compress=False)
    bad.write_bytes(bad.read_bytes()[:-3])
    with pytest.raises(ValueError, match=f"{bad}: IDX data has 7 bytes"):
        _readers.read_idx(bad)


def test_missing_mnist_lists_paths(tmp_path):
    with pytest.raises(DataNotFoundError) as info:
        create_scenario("permuted_mnist", root=tmp_path / "data")
    message = str(info.value)
    assert str(tmp_path / "data" / "MNIST" / "raw") in message
    assert str(tmp_path / "default-root" / "MNIST" / "raw") in message
    assert "download=True" in message
    assert str(tmp_path / "data" / "MNIST" / "raw") in info.value.searched[0]


def make_cifar(root, per_class_train=3, per_class_test=2):
    rng = np.random.default_rng(0)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    out = {}
    for split, per_class in (("train", per_class_train), ("test", per_class_test)):
        labels = np.tile(np.arange(100), per_class)
        data = rng.integers(0, 256, (len(labels), 3072), dtype=np.uint8)
        with open(folder / split, "wb") as f:
            pickle.dump({"data": data, "fine_labels": labels.tolist(), "coarse_labels": [0] * len(labels)}, f)
        out[split] = (data.reshape(-1, 3, 32, 32), labels)
    with open(folder / "meta", "wb") as f:
        pickle.dump({"fine_label_names": [f"c{i}" for i in range(100)]}, f)
    return out


def test_split_cifar100(tmp_path):
    data = make_cifar(tmp_path)
    sc = create_scenario("split_cifar100", root=tmp_path)
    assert (sc.num_tasks, sc.num_classes, sc.input_shape) == (20, 5, (3, 32, 32))
    assert sc.classes(3) == [15, 16, 17, 18, 19]
    task = sc.task(3)
    images, labels = data["test"]
    keep = np.isin(labels, sc.classes(3))
    mean, std = torch.tensor(CIFAR100_MEAN).view(1, 3, 1, 1), torch.tensor(CIFAR100_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(task.test.inputs, (torch.from_numpy(images[keep]).float() / 255 - mean) / std)
    assert torch.equal(task.test.targets, torch.from_numpy(labels[keep] - 15))
    assert task.test.batch_transform is None and task.train.batch_transform is not None
    # Augmented batches repeat for the same seed and epoch, and change from epoch to epoch.
    a = [x for x, _ in BatchLoader(task.train, 8, shuffle=True, seed=1)]
    b = [x for x, _ in BatchLoader(task.train, 8, shuffle=True, seed=1)]
    assert all(torch.equal(p, q) for p, q in zip(a, b))
    loader = BatchLoader(task.train, 15, shuffle=False)
    assert not torch.equal(next(iter(loader))[0], next(iter(loader))[0])
    plain = create_scenario("split_cifar100", root=tmp_path, augment=False).task(3)
    assert plain.train.batch_transform is None


def test_split_scenarios_share_one_class_split_check(tmp_path):
    make_cifar(tmp_path)
    make_mnist(tmp_path)
    for name, total in (("split_cifar100", 100), ("split_mnist", 10)):
        with pytest.raises(ValueError, match=f"{name}: class_order must be a permutation of 0..{total - 1}, got"):
            create_scenario(name, root=tmp_path, class_order=[0] * total)
        with pytest.raises(ValueError, match=f"{name}: 6 tasks x 20 classes do not fit in {total}"):
            create_scenario(name, root=tmp_path, num_tasks=6, classes_per_task=20)
        for bad in (2.0, True, 1):  # a float or bool was accepted (and truncated) before; 1 is too few
            with pytest.raises(ValueError, match=f"{name}: classes_per_task must be an int >= 2, got {bad!r}"):
                create_scenario(name, root=tmp_path, num_tasks=1, classes_per_task=bad)
    make_imagenet(tmp_path / "imagenet")
    for bad in (2.5, True, 1):  # 2.5 was reported as num_tasks 1.0 (4 // 2.5)
        with pytest.raises(ValueError, match=f"split_imagenet: classes_per_task must be an int >= 2, got {bad!r}"):
            create_scenario("split_imagenet", root=tmp_path, classes_per_task=bad)
    sc = create_scenario("split_cifar100", root=tmp_path, num_tasks=2, classes_per_task=np.int64(3),
                         class_order=list(range(99, -1, -1)))
    assert sc.classes(1) == [96, 95, 94] and sc.spec["classes_per_task"] == 3
    assert sorted(sc.task(1).test.targets.unique().tolist()) == [0, 1, 2]
    remap = label_remap([7, 2], 10)
    assert remap.dtype == np.int64 and remap.tolist() == [-1, -1, 1, -1, -1, -1, -1, 0, -1, -1]


def test_random_crop_flip_is_a_crop_of_the_padded_image():
    fill = [-m / s for m, s in zip(CIFAR100_MEAN, CIFAR100_STD)]
    aug = RandomCropFlip(4, fill)
    x = torch.randn(16, 3, 32, 32)
    out = aug(x, torch.Generator().manual_seed(3))
    padded = torch.tensor(fill).view(1, 3, 1, 1).expand(16, 3, 40, 40).clone()
    padded[:, :, 4:36, 4:36] = x
    flips, shifted = 0, 0
    for b in range(16):
        candidates = [(oy, ox, f) for oy in range(9) for ox in range(9) for f in (False, True)
                      if torch.equal(out[b], (lambda c: c.flip(-1) if f else c)(padded[b, :, oy:oy + 32, ox:ox + 32]))]
        assert candidates, f"image {b} is not a (flipped) crop of its padded original"
        flips += candidates[0][2]
        shifted += candidates[0][:2] != (4, 4)
    assert 0 < flips < 16 and shifted > 0  # both augmentations happen, not on every image


def test_missing_cifar_lists_paths(tmp_path):
    with pytest.raises(DataNotFoundError, match="CIFAR-100 not found") as info:
        create_scenario("split_cifar100", root=tmp_path)
    assert str(tmp_path / "cifar-100-python") in str(info.value)


def make_imagenet(root, wnids=("n03", "n01", "n04", "n02"), train_per_class=3, val_per_class=2):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", train_per_class), ("val", val_per_class)):
        for wnid in wnids:
            folder = root / split / wnid
            folder.mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 256, (40 + 4 * i, 48, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{wnid}_{i}.JPEG", format="JPEG")


def test_split_imagenet_image_folder(tmp_path):
    make_imagenet(tmp_path / "imagenet")
    sc = create_scenario("split_imagenet", root=tmp_path, classes_per_task=2, image_size=32)
    assert (sc.num_tasks, sc.num_classes, sc.input_shape) == (2, 2, (3, 32, 32))
    assert sc.classes(0) == ["n01", "n02"] and sc.classes(1) == ["n03", "n04"]  # sorted wnids
    task = sc.task(1)
    assert (len(task.train), len(task.test)) == (6, 4)
    batches = list(BatchLoader(task.train, batch_size=4, shuffle=True, seed=0))
    assert [x.shape for x, _ in batches] == [(4, 3, 32, 32), (2, 3, 32, 32)]
    assert sorted(torch.cat([y for _, y in batches]).tolist()) == [0, 0, 0, 1, 1, 1]
    # Validation transforms are deterministic: two passes give the same tensors.
    v1 = torch.cat([x for x, _ in BatchLoader(task.test, 4)])
    v2 = torch.cat([x for x, _ in BatchLoader(task.test, 4)])
    assert torch.equal(v1, v2)
    sub = create_scenario("split_imagenet", root=tmp_path, classes_per_task=2, image_size=32, train_subset=2)
    assert [label for _, label in sub.task(0).train.samples] == [0, 1]  # balanced "first N"


def test_split_imagenet_too_many_tasks_and_missing(tmp_path):
    make_imagenet(tmp_path)
    with pytest.raises(ValueError, match="at most 2 tasks"):
        create_scenario("split_imagenet", root=tmp_path, num_tasks=3, classes_per_task=2)
    with pytest.raises(DataNotFoundError, match="cannot be downloaded automatically") as info:
        create_scenario("split_imagenet", root=tmp_path / "none")
    assert str(tmp_path / "none") in str(info.value)


def test_every_reader_searches_root_then_the_default_root(tmp_path):
    default = _readers.default_root()
    assert _readers.search_roots(tmp_path / "mine") == [tmp_path / "mine", default]
    assert _readers.search_roots(None) == [default] == _readers.search_roots(default)  # listed once
    make_imagenet(default / "imagenet")  # ImageNet, like MNIST and CIFAR, falls back to the default root
    sc = create_scenario("split_imagenet", root=tmp_path / "empty", classes_per_task=2, image_size=32)
    assert sc.classes(1) == ["n03", "n04"]


def test_download_true_fetches_into_root_then_reads_the_torchvision_layout(tmp_path, monkeypatch):
    calls = []

    def fake_download(dataset, root):  # stands in for torchvision's downloader (no network in tests)
        calls.append((dataset, root))
        make_mnist(root)

    monkeypatch.setattr(_readers, "_download_torchvision", fake_download)
    with pytest.raises(DataNotFoundError):
        create_scenario("split_mnist", root=tmp_path / "data")  # download=False: never fetches
    assert calls == []
    sc = create_scenario("split_mnist", root=tmp_path / "data", download=True)
    assert calls == [("mnist", tmp_path / "data")]
    assert len(sc.task(0).train) == 12


# ----------------------------------------------------------------------------- CIFAR-100 pickles: no code from data


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_cifar_pickles_of_every_protocol_load(tmp_path, protocol):
    from impresslearn.scenarios._readers import load_data_pickle

    data = np.arange(2 * 3072, dtype=np.uint8).reshape(2, 3072)
    entry = {"data": data, "fine_labels": [3, 4], "filenames": [b"a.png", "b.png"], "batch_label": "training"}
    path = tmp_path / "train"
    path.write_bytes(pickle.dumps(entry, protocol=protocol))
    loaded = load_data_pickle(path)
    assert np.array_equal(loaded["data"], data) and loaded["fine_labels"] == [3, 4]


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def _crafted(marker, kind):
    if kind == "os.system":
        return pickle.dumps({"data": _RunsCode(marker), "fine_labels": []})
    if kind == "builtins.eval":
        return (b"cbuiltins\neval\n(V__import__('pathlib').Path('" + str(marker).encode() + b"').touch()\ntR.")
    if kind == "a class":
        return pickle.dumps({"data": np.zeros((1, 3072), np.uint8), "fine_labels": [0], "x": _RunsCode})
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["os.system", "builtins.eval", "a class"])
def test_crafted_cifar_pickle_runs_no_code_and_is_refused(tmp_path, kind):
    from impresslearn.scenarios import _readers

    _readers._decode_cifar.cache_clear()
    marker = tmp_path / "pwned"
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    (folder / "meta").write_bytes(pickle.dumps({}))
    (folder / "train").write_bytes(_crafted(marker, kind))
    (folder / "test").write_bytes(_crafted(marker, kind))
    with pytest.raises(ValueError, match=r"not a CIFAR-100 pickle: refusing to load \w+\.\w+"):
        create_scenario("split_cifar100", root=tmp_path)
    assert not marker.exists(), "code named by the data file ran"


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=200))
def test_any_bytes_as_cifar_file_give_data_or_a_value_error(tmp_path, data):
    from impresslearn.scenarios import _readers

    path = tmp_path / "junk"
    path.write_bytes(b"\x80\x02" + data)
    _readers._decode_cifar.cache_clear()
    try:
        _readers._decode_cifar(str(path))
    except ValueError as exc:
        assert str(path) in str(exc)

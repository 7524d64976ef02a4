"""The Fashion-MNIST scenarios on the real data set, read offline from the Debian package's files."""

from pathlib import Path

import numpy as np
import pytest
import torch

from impresslearn.scenarios import BatchLoader, DataNotFoundError, create_scenario
from impresslearn.scenarios import _readers
from impresslearn.scenarios.mnist import NORMALIZATION, rotate_images

SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
pytestmark = pytest.mark.skipif(
    not (SYSTEM_DIR / "train-images-idx3-ubyte.gz").is_file(),
    reason=f"Fashion-MNIST not installed in {SYSTEM_DIR} (apt-get install dataset-fashion-mnist)",
)
MEAN, STD = NORMALIZATION["fashion_mnist"]


@pytest.fixture(autouse=True)
def _empty_default_root(tmp_path, monkeypatch):
    # The default root must not shadow the system files (or hide a missing-data bug).
    monkeypatch.setenv(_readers.DATA_ROOT_ENV, str(tmp_path / "default-root"))


def raw(split):
    return _readers.load_mnist_like("fashion_mnist", None, split)


def test_permuted_full_task_shapes_labels_and_normalisation():
    sc = create_scenario("permuted_fmnist", num_tasks=3, seed=0)
    assert (sc.name, sc.num_tasks, sc.num_classes, sc.input_shape) == ("permuted_fmnist", 3, 10, (1, 28, 28))
    task = sc.task(2)
    assert (task.index, task.name) == (2, "permuted_fmnist/2")
    assert (len(task.train), len(task.test)) == (60000, 10000)
    x, y = task.train.tensors
    assert x.dtype == torch.float32 and x.shape == (60000, 1, 28, 28)
    assert y.dtype == torch.int64 and y.min() == 0 and y.max() == 9
    assert abs(x.mean().item()) < 0.01 and abs(x.std().item() - 1) < 0.02  # train-split statistics
    # Exactly the raw images, permuted by the task's permutation, then normalised.
    images, labels = raw("test")
    perm = sc.permutation(2)
    expected = (torch.from_numpy(images[:50].astype(np.float32)).reshape(50, -1)[:, perm] / 255 - MEAN) / STD
    torch.testing.assert_close(task.test.inputs[:50].reshape(50, -1), expected, rtol=0, atol=1e-6)
    assert torch.equal(task.test.targets, torch.from_numpy(labels))


def test_permutations_differ_across_tasks_and_repeat_for_a_seed():
    a = create_scenario("permuted_fmnist", num_tasks=4, seed=0, train_subset=10, test_subset=10)
    b = create_scenario("permuted_fmnist", num_tasks=4, seed=0, train_subset=10, test_subset=10)
    c = create_scenario("permuted_fmnist", num_tasks=4, seed=1, train_subset=10, test_subset=10)
    perms = [a.permutation(t) for t in range(4)]
    for p in perms:
        assert torch.equal(torch.sort(p).values, torch.arange(784))
    assert all(not torch.equal(perms[i], perms[j]) for i in range(4) for j in range(i))
    assert all(torch.equal(perms[t], b.permutation(t)) for t in range(4))
    assert not torch.equal(perms[0], c.permutation(0))
    assert torch.equal(a.task(3).train.inputs, b.task(3).train.inputs)


def test_rotated_angle_is_fixed_per_task_not_per_image():
    sc = create_scenario("rotated_fmnist", num_tasks=4, seed=0, train_subset=300, test_subset=100, cache_size=0)
    assert sc.angles == [0.0, 90.0, 180.0, 270.0]  # evenly spaced over [0, 360)
    base = sc.task(0).train.inputs
    images, _ = raw("train")
    torch.testing.assert_close(base, (torch.from_numpy(images[:300].astype(np.float32))[:, None] / 255 - MEAN) / STD)
    # Every image of task 1 is the same image of task 0 turned by the same 90 degrees.
    assert torch.equal(sc.task(1).train.inputs, torch.rot90(base, 1, dims=(-2, -1)))
    # A non-right angle: the whole split is turned by one angle (compare with the helper on raw images).
    odd = create_scenario("rotated_fmnist", num_tasks=2, angles=[0, 33.0], train_subset=300, test_subset=100)
    assert odd.angle(1) == 33.0
    raw01 = torch.from_numpy(images[:300].astype(np.float32))[:, None] / 255
    torch.testing.assert_close(odd.task(1).train.inputs, (rotate_images(raw01, 33.0) - MEAN) / STD)
    assert not torch.allclose(odd.task(1).train.inputs, odd.task(0).train.inputs)


def test_rotated_images_are_identical_every_epoch_and_rebuild():
    sc = create_scenario("rotated_fmnist", num_tasks=3, train_subset=256, test_subset=64, cache_size=0)
    loader = BatchLoader(sc.task(1).train, batch_size=64, shuffle=False)
    epoch1 = torch.cat([x for x, _ in loader])
    epoch2 = torch.cat([x for x, _ in loader])
    assert torch.equal(epoch1, epoch2)
    assert torch.equal(sc.task(1).train.inputs, epoch1)  # rebuilt from scratch (cache_size=0): same images


def test_rotated_angles_must_match_tasks():
    with pytest.raises(ValueError, match="3 angles given for 2 tasks"):
        create_scenario("rotated_fmnist", num_tasks=2, angles=[0, 10, 20])


def test_split_classes_are_disjoint_and_relabelled():
    sc = create_scenario("split_fmnist")
    assert (sc.num_tasks, sc.num_classes) == (5, 2)
    classes = [sc.classes(t) for t in range(5)]
    assert sorted(c for cs in classes for c in cs) == list(range(10))
    _, raw_train = raw("train")
    for t in range(5):
        task = sc.task(t)
        assert len(task.train) == 12000 and len(task.test) == 2000
        assert set(task.train.targets.unique().tolist()) == {0, 1}
        original = raw_train[np.isin(raw_train, classes[t])]
        assert torch.equal(task.train.targets, torch.from_numpy((original == classes[t][1]).astype(np.int64)))


def test_split_with_class_order():
    sc = create_scenario("split_fmnist", class_order=[9, 8, 7, 6, 5, 4, 3, 2, 1, 0], train_subset=50, test_subset=50)
    assert sc.classes(0) == [9, 8]
    with pytest.raises(ValueError, match="permutation of 0..9"):
        create_scenario("split_fmnist", class_order=[0] * 10)
    with pytest.raises(ValueError, match="do not fit"):
        create_scenario("split_fmnist", num_tasks=6)


def test_subsets_first_and_random():
    full = create_scenario("permuted_fmnist", num_tasks=1).task(0)
    first = create_scenario("permuted_fmnist", num_tasks=1, train_subset=100, test_subset=20).task(0)
    assert (len(first.train), len(first.test)) == (100, 20)
    assert torch.equal(first.train.inputs, full.train.inputs[:100])
    r1 = create_scenario("permuted_fmnist", num_tasks=1, train_subset=100, subset_mode="random").task(0)
    r2 = create_scenario("permuted_fmnist", num_tasks=1, train_subset=100, subset_mode="random").task(0)
    assert torch.equal(r1.train.inputs, r2.train.inputs)
    assert not torch.equal(r1.train.inputs, first.train.inputs)


def test_missing_fashion_mnist_lists_every_place_and_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setattr(_readers, "FASHION_MNIST_SYSTEM_DIRS", [tmp_path / "system"])
    with pytest.raises(DataNotFoundError) as info:
        create_scenario("permuted_fmnist", root=tmp_path / "mine")
    message = str(info.value)
    for place in (tmp_path / "mine" / "FashionMNIST" / "raw", tmp_path / "default-root" / "FashionMNIST" / "raw",
                  tmp_path / "system"):
        assert str(place) in message
    assert "apt-get install dataset-fashion-mnist" in message and "download=True" in message
    assert isinstance(info.value, FileNotFoundError)


def test_torchvision_layout_under_root_is_found(tmp_path, monkeypatch):
    monkeypatch.setattr(_readers, "FASHION_MNIST_SYSTEM_DIRS", [])  # only root can provide the files
    raw_dir = tmp_path / "FashionMNIST" / "raw"
    raw_dir.mkdir(parents=True)
    for f in SYSTEM_DIR.glob("*-ubyte.gz"):
        (raw_dir / f.name).symlink_to(f)
    sc = create_scenario("split_fmnist", root=tmp_path, train_subset=10, test_subset=10)
    assert sc.task(0).train.inputs.shape == (10, 1, 28, 28)

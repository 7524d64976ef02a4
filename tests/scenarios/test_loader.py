"""BatchLoader: every example once per epoch, seeded orders, fast path and DataLoader path agree."""

import pytest
import torch
from torch.utils.data import Dataset, TensorDataset

from impresslearn.scenarios import BatchLoader, InMemoryDataset


def dataset(n=103):
    return InMemoryDataset(torch.arange(n, dtype=torch.float32).view(n, 1), torch.arange(n) % 7)


def order(loader):
    return torch.cat([x[:, 0] for x, _ in loader]).long()


def test_each_epoch_is_a_permutation_and_differs_from_the_last():
    loader = BatchLoader(dataset(), batch_size=10, shuffle=True, seed=0)
    assert len(loader) == 11
    epochs = [order(loader) for _ in range(3)]
    for e in epochs:
        assert torch.equal(e.sort().values, torch.arange(103))
    assert not torch.equal(epochs[0], epochs[1]) and not torch.equal(epochs[1], epochs[2])


def test_same_seed_same_sequence_of_orders_other_seed_differs():
    a = BatchLoader(dataset(), 10, shuffle=True, seed=5)
    b = BatchLoader(dataset(), 10, shuffle=True, seed=5)
    c = BatchLoader(dataset(), 10, shuffle=True, seed=6)
    assert [order(a).tolist() for _ in range(2)] == [order(b).tolist() for _ in range(2)]
    assert not torch.equal(order(c), order(BatchLoader(dataset(), 10, shuffle=True, seed=5)))
    a.set_epoch(1)
    b.set_epoch(1)
    assert torch.equal(order(a), order(b))


def test_labels_travel_with_inputs():
    for x, y in BatchLoader(dataset(), 16, shuffle=True, seed=1):
        assert torch.equal(y, x[:, 0].long() % 7)


def test_no_shuffle_and_drop_last():
    assert torch.equal(order(BatchLoader(dataset(), 10)), torch.arange(103))
    loader = BatchLoader(dataset(), 10, shuffle=True, drop_last=True)
    assert len(loader) == 10
    sizes = [len(y) for _, y in loader]
    assert sizes == [10] * 10


def test_tensor_dataset_and_generic_dataset_give_the_same_batches():
    class Slow(Dataset):  # no ``tensors``: goes through torch's DataLoader
        def __len__(self):
            return 50

        def __getitem__(self, i):
            return torch.tensor([float(i)]), torch.tensor(i % 7)

    fast = BatchLoader(TensorDataset(torch.arange(50.0).view(50, 1), torch.arange(50) % 7), 8, shuffle=True, seed=2)
    slow = BatchLoader(Slow(), 8, shuffle=True, seed=2)
    for (xf, yf), (xs, ys) in zip(fast, slow, strict=True):
        assert torch.equal(xf, xs) and torch.equal(yf, ys)


def test_bad_arguments():
    with pytest.raises(ValueError, match="batch_size"):
        BatchLoader(dataset(), 0)
    with pytest.raises(ValueError, match="num_workers"):
        BatchLoader(dataset(), 4, num_workers=-1)
    with pytest.raises(ValueError, match="differ in length"):
        InMemoryDataset(torch.zeros(3, 2), torch.zeros(4, dtype=torch.int64))
    with pytest.raises(ValueError, match="int64"):
        InMemoryDataset(torch.zeros(3, 2), torch.zeros(3))

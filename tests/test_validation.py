"""impresslearn.validation: the one train/validation split and the one choice rule."""

import pytest
import torch

from impresslearn import TrainConfig
from impresslearn.scenarios import InMemoryDataset
from impresslearn.validation import ALPHA_CANDIDATES, candidate_name, choose, validation_split


def test_the_split_validates_on_the_last_images_and_trains_on_the_first():
    data = InMemoryDataset(torch.arange(20.0).reshape(20, 1), torch.arange(20))
    train, val = validation_split(data, validation_images=5, train_images=8)
    assert train.tensors[1].tolist() == list(range(8)) and val.tensors[1].tolist() == list(range(15, 20))
    train, _ = validation_split(data, validation_images=5)  # all of the rest
    assert train.tensors[1].tolist() == list(range(15))
    train, _ = validation_split(data, validation_images=5, train_images=100)  # never into the validation part
    assert len(train.tensors[1]) == 15
    with pytest.raises(ValueError, match="20 examples leave none to train after 20 validation examples"):
        validation_split(data, validation_images=20)
    with pytest.raises(ValueError, match="train_images: must be >= 1"):
        validation_split(data, validation_images=5, train_images=0)


def test_the_choice_reads_validation_on_the_first_seed_only():
    a, b = TrainConfig(lr=0.1), TrainConfig(lr=0.2)
    results = [
        dict(seed=1, candidate=candidate_name(a), validation=0.9, test=0.1),
        dict(seed=1, candidate=candidate_name(b), validation=0.5, test=0.9),  # better on test: never chosen
        dict(seed=2, candidate=candidate_name(b), validation=0.99, test=0.9),  # a later seed: not read
    ]
    assert choose(results, [a, b]) is a
    assert choose(results[:1], [a, b]) is None  # b has not run on the first seed
    assert choose([], [a, b]) is None
    tie = [dict(seed=0, candidate=candidate_name(c), validation=0.5) for c in (a, b)]
    assert choose(tie, [b, a]) is b  # a tie goes to the earlier candidate
    assert candidate_name(ALPHA_CANDIDATES[1]) == "rmsprop lr 0.0005"

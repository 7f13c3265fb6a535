"""Generated datasets: the loaders' columns, deterministic by seed, binary and multi-class."""

from __future__ import annotations

import numpy as np
import pytest

from sam_peft.data import SYNTHETIC_DOMAINS, binary_dataset, binary_samples, multiclass_dataset, multiclass_samples


def test_binary_dataset_matches_binary_samples():
    dataset = binary_dataset(3, size=32, seed=4)
    images, masks = binary_samples(3, size=32, seed=4)
    assert dataset.column_names == ["image", "mask", "id"] and dataset["id"] == ["00000", "00001", "00002"]
    example = dataset[1]
    assert np.array_equal(np.asarray(example["image"]), images[1])
    assert np.array_equal(np.asarray(example["mask"]), masks[1])


def test_multiclass_samples_are_deterministic_and_use_several_classes():
    images, labels = multiclass_samples(6, size=32, num_labels=4, seed=2)
    again, labels_again = multiclass_samples(6, size=32, num_labels=4, seed=2)
    other, _ = multiclass_samples(6, size=32, num_labels=4, seed=3)
    assert images.shape == (6, 32, 32, 3) and labels.shape == (6, 32, 32) and labels.dtype == np.uint8
    assert np.array_equal(images, again) and np.array_equal(labels, labels_again)
    assert not np.array_equal(images, other)
    assert set(np.unique(labels)) <= {0, 1, 2, 3} and len(np.unique(labels)) >= 3
    assert all((label > 0).any() for label in labels)


def test_multiclass_dataset_columns_and_ids():
    dataset = multiclass_dataset(2, size=24, num_labels=3, seed=0, split="validation")
    _, labels = multiclass_samples(2, size=24, num_labels=3, seed=0)
    assert dataset.column_names == ["image", "label", "id"] and str(dataset.split) == "validation"
    assert np.array_equal(np.asarray(dataset[0]["label"]), labels[0])


def test_multiclass_needs_two_labels():
    with pytest.raises(ValueError, match="num_labels"):
        multiclass_samples(1, num_labels=1)


def test_synthetic_domains_differ_in_appearance():
    means = {}
    for name in SYNTHETIC_DOMAINS:
        images, masks = binary_samples(6, size=48, seed=1, appearance=name)
        assert set(np.unique(masks)) == {0, 1}
        means[name] = images.reshape(-1, 3).mean(0)
    names = sorted(means)
    gaps = [np.abs(means[a] - means[b]).max() for i, a in enumerate(names) for b in names[i + 1 :]]
    assert min(gaps) > 10  # every pair of domains differs by more than 10 grey levels in some channel's mean
    default = binary_samples(2, size=32, seed=3)
    explicit = binary_samples(2, size=32, seed=3, appearance=SYNTHETIC_DOMAINS["camouflage"])
    assert all(np.array_equal(a, b) for a, b in zip(default, explicit, strict=True))
    shadow, mask = binary_samples(4, size=48, seed=0, appearance="shadow")
    assert shadow[mask == 1].mean() < shadow[mask == 0].mean() - 50  # shadows are dark


def test_unknown_synthetic_domain_is_named():
    with pytest.raises(ValueError, match=r"Unknown synthetic domain 'snow'; expected one of \['camouflage'"):
        binary_dataset(1, appearance="snow")

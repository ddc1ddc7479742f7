"""The real MNIST files written by `python -m nnjax.data prepare` (the Makefile runs it
before pytest). Absent data fails these tests, with the command in the message: CI must
never pass without having checked the real data."""
import numpy as np
import pytest

from nnjax import data

# Per-digit counts of the standard MNIST splits (LeCun, Cortes and Burges).
TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
# The first ten labels of each split, in the original file order.
TRAIN_FIRST_LABELS = [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
TEST_FIRST_LABELS = [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]


@pytest.fixture(scope="module")
def mnist():
    """Both splits, loaded once; a DataMissingError here names `python -m nnjax.data prepare`."""
    return {split: data.load_mnist(split) for split in ("train", "test")}


@pytest.mark.parametrize("split, counts, first", [
    ("train", TRAIN_COUNTS, TRAIN_FIRST_LABELS),
    ("test", TEST_COUNTS, TEST_FIRST_LABELS),
])
def test_standard_shapes_counts_and_order(mnist, split, counts, first):
    images, labels = mnist[split]
    assert images.shape == (sum(counts), 28, 28) and images.dtype == np.uint8
    assert labels.shape == (sum(counts),) and np.issubdtype(labels.dtype, np.integer)
    np.testing.assert_array_equal(np.bincount(labels, minlength=10), counts)
    np.testing.assert_array_equal(labels[:10], first)


def test_pixels_are_bytes_with_the_standard_statistics(mnist):
    images, _ = mnist["train"]
    assert images.min() == 0 and images.max() == 255
    count = images.size
    mean = images.sum(dtype=np.int64) / count / 255
    squares = np.square(images, dtype=np.uint16).sum(dtype=np.int64) / count / 255**2
    std = np.sqrt(squares - mean**2)
    # The normalization constants used everywhere for MNIST: mean 0.1307, std 0.3081.
    assert abs(mean - 0.1307) < 1e-4 and abs(std - 0.3081) < 1e-4


def test_splits_differ_and_images_are_digits(mnist):
    train, test = mnist["train"][0], mnist["test"][0]
    assert not np.array_equal(train[:10_000], test)
    ink = (train > 127).reshape(len(train), -1).sum(axis=1)
    assert ink.min() > 0 and 50 < np.median(ink) < 200


def test_mnist_arrays_are_in_the_unit_range(mnist):
    images, labels = data.mnist_arrays("test")
    assert images.shape == (10_000, 784) and images.dtype == np.float32
    assert images.min() == 0.0 and images.max() == 1.0
    np.testing.assert_array_equal(labels, mnist["test"][1])


def test_the_prepared_folder_verifies_and_prepare_is_a_no_op():
    folder = data.verify_mnist()
    stamps = sorted((p.name, p.stat().st_mtime_ns) for p in folder.iterdir())
    assert data.prepare_mnist() == folder
    assert sorted((p.name, p.stat().st_mtime_ns) for p in folder.iterdir()) == stamps

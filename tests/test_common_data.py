"""Framework-neutral data readers: digits, CIFAR pickles, ImageFolder listing, and their errors."""
import os
import pickle

import numpy as np
import pytest

from common.data import list_image_folder, load_cifar, load_digits_images
from common.data.digits import bilinear_matrix


def test_digits_are_embedded_and_upsampled():
    x, y = load_digits_images(32)
    assert x.shape == (1797, 3, 32, 32) and x.dtype == np.float32
    assert 0.0 <= x.min() and x.max() <= 1.0
    assert np.bincount(y).tolist() == [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]
    # the mean brightness of an upsampled image equals the source's (bilinear preserves the mean closely)
    from sklearn.datasets import load_digits
    src = load_digits().images[:50] / 16.0
    np.testing.assert_allclose(x[:50, 0].mean(axis=(1, 2)), src.mean(axis=(1, 2)), atol=0.02)


def test_bilinear_matrix_matches_half_pixel_rule():
    a = bilinear_matrix(8, 32)
    np.testing.assert_allclose(a.sum(axis=1), 1.0)
    # output pixel 5 sits at source coordinate (5.5 / 4) - 0.5 = 0.875
    np.testing.assert_allclose(a[5, :2], [0.125, 0.875])
    np.testing.assert_allclose(bilinear_matrix(8, 8), np.eye(8))
    with pytest.raises(ValueError, match="img_size must be >= 8"):
        load_digits_images(4)


def _write_cifar10(root, n=4, corrupt=None):
    folder = os.path.join(root, "cifar-10-batches-py")
    os.makedirs(folder)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(os.path.join(folder, name), "wb") as fh:
            if name == corrupt:
                fh.write(b"not a pickle")
                continue
            pickle.dump({b"data": rng.integers(0, 255, (n, 3072), dtype=np.uint8),
                         b"labels": list(rng.integers(0, 10, n))}, fh)
    return folder


def test_cifar10_reader(tmp_path):
    _write_cifar10(str(tmp_path))
    x, y = load_cifar(str(tmp_path), 10, "train")
    assert x.shape == (20, 32, 32, 3) and x.dtype == np.uint8 and y.shape == (20,)
    xt, _ = load_cifar(str(tmp_path / "cifar-10-batches-py"), 10, "test")
    assert xt.shape == (4, 32, 32, 3)


def test_cifar_errors_name_what_was_expected(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no CIFAR-100 python folder.*cifar-100-python"):
        load_cifar(str(tmp_path), 100)
    _write_cifar10(str(tmp_path), corrupt="data_batch_3")
    with pytest.raises(ValueError, match="data_batch_3: expected a CIFAR python batch"):
        load_cifar(str(tmp_path), 10, "train")


def test_image_folder_listing(tmp_path):
    for cls in ("b_dog", "a_cat"):
        os.makedirs(tmp_path / cls / "sub")
        (tmp_path / cls / "1.png").write_bytes(b"x")
        (tmp_path / cls / "sub" / "2.JPG").write_bytes(b"x")
        (tmp_path / cls / "notes.txt").write_text("x")
    samples, classes = list_image_folder(str(tmp_path))
    assert classes == ["a_cat", "b_dog"]
    assert [(os.path.relpath(p, tmp_path), c) for p, c in samples] == [
        ("a_cat/1.png", 0), ("a_cat/sub/2.JPG", 0), ("b_dog/1.png", 1), ("b_dog/sub/2.JPG", 1)]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        list_image_folder(str(tmp_path / "missing"))
    os.makedirs(tmp_path / "empty" / "cls")
    with pytest.raises(FileNotFoundError, match="no images"):
        list_image_folder(str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match="no class sub-folders"):
        list_image_folder(str(tmp_path / "empty" / "cls"))

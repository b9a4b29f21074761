"""The shared resampling matrix equals nearest-x2 upsampling followed by adaptive average pooling."""
import numpy as np
import pytest

from common import ConfigError, resample_matrix
from common.resample import resample_grid_np


def _nearest_then_adaptive_pool(x: np.ndarray, t: int) -> np.ndarray:
    """Independent 2-D implementation of the reference ops (torch semantics) on (s, s) maps."""
    up = np.repeat(np.repeat(x, 2, axis=-2), 2, axis=-1)
    n = up.shape[-1]
    out = np.zeros(x.shape[:-2] + (t, t))
    for i in range(t):
        r0, r1 = (i * n) // t, -((-(i + 1) * n) // t)
        for j in range(t):
            c0, c1 = (j * n) // t, -((-(j + 1) * n) // t)
            out[..., i, j] = up[..., r0:r1, c0:c1].mean(axis=(-2, -1))
    return out


def test_reference_rows_7_to_10():
    a = resample_matrix(7, 10)
    expected = {0: {0: 1}, 1: {0: .5, 1: .5}, 2: {1: 2 / 3, 2: 1 / 3}, 3: {2: 1}, 4: {2: .5, 3: .5},
                5: {3: .5, 4: .5}, 6: {4: 1}, 7: {4: 1 / 3, 5: 2 / 3}, 8: {5: .5, 6: .5}, 9: {6: 1}}
    for row, weights in expected.items():
        dense = np.zeros(7)
        for col, w in weights.items():
            dense[col] = w
        np.testing.assert_allclose(a[row], dense, atol=1e-7)


@pytest.mark.parametrize("s", range(1, 15))
def test_matrix_equals_reference_ops_for_every_valid_pair(s):
    rng = np.random.default_rng(s)
    x = rng.standard_normal((3, s, s))
    for t in range(s, 2 * s + 1):
        a = resample_matrix(s, t, np.float64)
        np.testing.assert_allclose(a.sum(axis=1), 1.0, atol=1e-12)
        assert (np.count_nonzero(a, axis=1) <= 2).all()
        np.testing.assert_allclose(resample_grid_np(x, s, t), _nearest_then_adaptive_pool(x, t), atol=1e-12)


def test_same_size_is_identity():
    np.testing.assert_array_equal(resample_matrix(5, 5), np.eye(5, dtype=np.float32))


@pytest.mark.parametrize("s, t", [(7, 15), (10, 7), (0, 1)])
def test_unmappable_grids_raise(s, t):
    with pytest.raises(ConfigError, match="s <= t <= 2s|positive integer"):
        resample_matrix(s, t)

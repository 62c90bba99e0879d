"""The global pooling layers of the shapes CNN: gradient checks and engine translations.
(The trained-CNN localisation test is in test_exam_autograd.py, shared with viz-4.)"""
import numpy as np
import pytest

from refdl.gradcheck import check_module
from refdl.autograd import Tensor
from refdl.interpret import to_engine
from experiments.gradcam_shapes import GlobalAvgPool2d, GlobalMaxPool2d


@pytest.mark.parametrize("pool", [GlobalAvgPool2d, GlobalMaxPool2d])
def test_global_pool_gradcheck_and_engine_translation(pool):
    x = np.random.default_rng(0).permutation(120).reshape(2, 3, 4, 5) / 7.0   # no ties
    check_module(pool(), x)
    t = Tensor(x, requires_grad=True)
    y = to_engine(pool())(t)
    np.testing.assert_array_equal(y.data, pool()(x))
    g = np.random.default_rng(1).standard_normal(y.shape)
    y.backward(g)
    m = pool()
    m(x)
    np.testing.assert_allclose(t.grad.data, m.backward(g), rtol=1e-15)

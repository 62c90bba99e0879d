"""Embedding: lookup, scatter-add backward, padding_idx, errors."""
import numpy as np
import pytest

import refdl
from refdl import nn
from refdl.gradcheck import check_module


def test_lookup_equals_one_hot_matmul():
    refdl.manual_seed(0)
    emb = nn.Embedding(6, 3)
    idx = np.array([[1, 5, 1], [0, 2, 2]])
    y = emb(idx)
    assert y.shape == (2, 3, 3) and y.dtype == np.float32
    np.testing.assert_array_equal(y, np.eye(6, dtype=np.float32)[idx] @ emb.weight.data)


def test_gradcheck_with_repeated_indices():
    refdl.manual_seed(1)
    check_module(nn.Embedding(5, 3), np.array([[1, 2, 1], [0, 4, 1]]))
    check_module(nn.Embedding(4, 2), np.array(3))          # a single index -> (2,)


def test_scatter_add_backward_and_padding_row():
    refdl.manual_seed(0)
    emb = nn.Embedding(5, 2, padding_idx=0).to(np.float64)
    assert np.all(emb.weight.data[0] == 0)
    idx = np.array([0, 3, 3, 1, 0])
    emb(idx)
    g = np.arange(10.0).reshape(5, 2)
    assert emb.backward(g) is None
    want = np.zeros((5, 2))
    want[3] = g[1] + g[2]            # index 3 appears twice: both rows add up
    want[1] = g[3]                   # the padding row 0 gets nothing
    np.testing.assert_array_equal(emb.weight.grad, want)
    assert nn.Embedding(5, 2, padding_idx=-1).padding_idx == 4


def test_from_pretrained_is_frozen():
    w = np.arange(6.0).reshape(3, 2)
    emb = nn.Embedding.from_pretrained(w)
    np.testing.assert_array_equal(emb(np.array([2, 0])), w[[2, 0]])
    assert emb.num_parameters() == 0
    emb.backward(np.ones((2, 2)))
    assert np.all(emb.weight.grad == 0)


def test_errors():
    emb = nn.Embedding(5, 2)
    with pytest.raises(IndexError, match=r"Embedding\(5, 2\): index 5 is out of range "
                                         r"\[0, 5\) \(input shape \(2,\)\)"):
        emb(np.array([1, 5]))
    with pytest.raises(IndexError, match=r"index -1 is out of range"):
        emb(np.array([-1, 2]))
    with pytest.raises(TypeError, match=r"Embedding\(5, 2\): expected integer indices"):
        emb(np.array([1.0, 2.0]))
    with pytest.raises(ValueError, match="padding_idx must be within num_embeddings"):
        nn.Embedding(5, 2, padding_idx=5)
    emb(np.array([1, 2]))
    with pytest.raises(ValueError, match=r"expected grad_out of shape \(2, 2\)"):
        emb.backward(np.zeros((3, 2)))

"""What a PyTorch user reaches for on a Module: ModuleDict, ParameterList/Dict, apply,
requires_grad_, get_submodule, to('cpu'), and a mistake in a user's backward reported by
the gradient check rather than by a TypeError from zero_grad."""
import numpy as np
import pytest

import refdl
from refdl import nn, optim
from refdl.gradcheck import check_module


class MultiHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Linear(3, 4)
        self.heads = nn.ModuleDict({"cls": nn.Linear(4, 2), "reg": nn.Linear(4, 1)})
        self.scales = nn.ParameterList([np.ones(2), np.full(1, 2.0)])

    def forward(self, x, task):
        return self.heads[task](self.body(x)) * self.scales[0 if task == "cls" else 1].data


def test_containers_register_parameters_with_pytorch_keys():
    m = MultiHead()
    assert list(m.state_dict()) == ["body.weight", "body.bias", "heads.cls.weight",
                                    "heads.cls.bias", "heads.reg.weight", "heads.reg.bias",
                                    "scales.0", "scales.1"]
    assert m.num_parameters() == 3 * 4 + 4 + 4 * 2 + 2 + 4 + 1 + 2 + 1
    assert list(m.heads) == ["cls", "reg"] and "reg" in m.heads and len(m.heads) == 2
    assert isinstance(m.scales[1], nn.Parameter) and len(m.scales) == 2
    reg = m.heads.pop("reg")
    assert isinstance(reg, nn.Linear) and "heads.reg.weight" not in m.state_dict()
    pd = nn.ParameterDict({"alpha": np.zeros(3)})
    pd["beta"] = nn.Parameter(np.ones(1))
    assert list(pd.state_dict()) == ["alpha", "beta"]
    with pytest.raises(TypeError, match="must be a Module"):
        m.heads["x"] = np.zeros(2)
    with pytest.raises(KeyError, match="without '.'"):
        pd["a.b"] = np.zeros(1)


def test_dict_containers_read_back_what_was_registered():
    # ModuleDict and ParameterDict share one dict protocol over Module's registries: what
    # [] / in / len / iter / keys / values / items return is what named_* registered
    beta = nn.Parameter(np.ones(1))
    pd = nn.ParameterDict({"alpha": np.zeros(3)})
    pd["beta"] = beta
    assert pd["beta"] is beta and isinstance(pd["alpha"], nn.Parameter)
    assert list(pd) == list(pd.keys()) == ["alpha", "beta"] and len(pd) == 2
    assert "alpha" in pd and "gamma" not in pd
    registered = dict(pd.named_parameters())
    assert all(registered[k] is v for k, v in pd.items())
    assert [id(v) for v in pd.values()] == [id(registered[k]) for k in ("alpha", "beta")]
    heads = nn.ModuleDict([("a", nn.Linear(2, 2)), ("b", nn.ReLU())])
    assert list(heads.keys()) == ["a", "b"] and len(heads) == 2 and "b" in heads
    children = dict(heads.named_children())
    assert all(children[k] is v for k, v in heads.items())
    del heads["a"]
    assert list(heads) == ["b"] and not list(heads.parameters())


def test_apply_visits_children_first_and_initialises():
    net = nn.Sequential(nn.Linear(2, 3), nn.Sequential(nn.ReLU(), nn.Linear(3, 1)))
    order = []
    net.apply(lambda m: order.append(type(m).__name__))
    assert order == ["Linear", "ReLU", "Linear", "Sequential", "Sequential"]

    def init_weights(m):
        if isinstance(m, nn.Linear):
            m.weight.data[...] = 0.5
    assert net.apply(init_weights) is net
    assert np.all(net[0].weight.data == 0.5) and np.all(net[1][1].weight.data == 0.5)


def test_requires_grad_freezes_for_the_optimiser():
    refdl.manual_seed(0)
    net = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1))
    assert net[0].requires_grad_(False) is net[0]
    assert net.num_parameters() == 4
    frozen = net[0].weight.data.copy()
    opt = optim.SGD(net.parameters(), lr=0.1)
    net(np.ones((2, 2), np.float32))
    net.backward(np.ones((2, 1), np.float32))
    opt.step()
    np.testing.assert_array_equal(net[0].weight.data, frozen)
    assert net[0].weight.requires_grad_() .requires_grad is True


def test_get_submodule_and_to_cpu():
    net = nn.Sequential(nn.Linear(2, 3), nn.Sequential(nn.ReLU(), nn.Linear(3, 1)))
    assert net.get_submodule("1.1") is net[1][1] and net.get_submodule("") is net
    with pytest.raises(AttributeError, match="no sub-module '7'"):
        net.get_submodule("1.7")
    assert net.to("cpu") is net and net.cpu() is net
    assert net.to("cpu", np.float64)[0].weight.dtype == np.float64
    assert net.to(device="cpu", dtype="float32")[0].weight.dtype == np.float32
    with pytest.raises(ValueError, match="CPU only.*'cuda:0'"):
        net.to("cuda:0")
    with pytest.raises(TypeError, match="floating dtype"):
        net.to(np.int32)


class ScaleByA(nn.Module):
    """y = a x with a 0-d parameter a; its backward assigns a.grad with = (a mistake)."""

    def __init__(self, assign):
        super().__init__()
        self.a, self.assign = nn.Parameter(np.array(2.0)), assign

    def forward(self, x):
        self.save_for_backward(x)
        return self.a.data * x

    def backward(self, g):
        x = self.pop_saved()
        if self.assign:
            self.a.grad = float(np.sum(g * x))
        else:
            self.a.grad += np.sum(g * x)
        return g * self.a.data


def test_a_replaced_gradient_is_a_gradcheck_failure_naming_the_parameter():
    result = check_module(ScaleByA(assign=True), np.ones(3), raise_exception=False)
    assert not result.passed
    assert any("gradient of a was replaced by a float" in p and "a.grad += ..." in p
               for p in result.problems)
    check_module(ScaleByA(assign=False), np.ones(3))      # the corrected layer passes
    m = ScaleByA(assign=True)
    m(np.ones(3))
    m.backward(np.ones(3))
    m.zero_grad()                                          # no TypeError: reset to zeros
    assert isinstance(m.a.grad, np.ndarray) and m.a.grad.shape == () and m.a.grad == 0


# -- refdl.summary as torchinfo spells it ------------------------------------------------------

def test_summary_torchinfo_spelling_no_caches_and_a_table_not_a_dict(capsys):
    refdl.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    net(np.ones((2, 4), np.float32))                      # a pending training forward
    info = refdl.summary(net, input_size=(5, 4))
    out = capsys.readouterr().out
    assert "Total params: 67" in out and "(5, 3)" in out
    assert repr(info) == "ModelSummary(4 calls, total_params=67, trainable_params=67)"
    assert str(info) + "\n" == out
    assert info["total_params"] == sum(p.data.size for p in net.parameters())
    assert [r["output_shape"] for r in info["rows"]] == [(5, 3), (5, 8), (5, 8), (5, 3)]
    assert [m.num_saved for m in net] == [1, 1, 1]        # untouched: summary records none
    data = refdl.summary(net, input_data=np.zeros((7, 4), np.float32), print_fn=None)
    assert data["rows"][0]["output_shape"] == (7, 3)
    with pytest.raises(TypeError, match="input_size"):
        refdl.summary(net)


# -- DataLoader samplers -----------------------------------------------------------------------

def test_dataloader_samplers_as_in_pytorch():
    from refdl.data import (BatchSampler, DataLoader, RandomSampler, SequentialSampler,
                            SubsetRandomSampler, TensorDataset, WeightedRandomSampler)
    x = np.arange(10, dtype=np.float32)[:, None]
    ds = TensorDataset(x, np.arange(10))
    seq = DataLoader(ds, batch_size=4, sampler=SequentialSampler(ds), drop_last=True)
    assert [b[1].tolist() for b in seq] == [[0, 1, 2, 3], [4, 5, 6, 7]] and len(seq) == 2
    sub = DataLoader(ds, batch_size=3, sampler=SubsetRandomSampler(
        [1, 3, 5, 7], generator=np.random.default_rng(0)))
    got = np.concatenate([b[1] for b in sub])
    assert sorted(got.tolist()) == [1, 3, 5, 7] and len(sub) == 2
    # weights 0 for the evens: only odd indices are drawn; frequencies follow the weights
    w = np.array([0, 1, 0, 1, 0, 1, 0, 1, 0, 6], float)
    ws = WeightedRandomSampler(w, 20000, generator=np.random.default_rng(1))
    draws = np.array(list(ws))
    assert set(draws.tolist()) <= {1, 3, 5, 7, 9}
    assert abs(np.mean(draws == 9) - 0.6) < 0.02
    rs = list(RandomSampler(ds, generator=np.random.default_rng(2)))
    assert sorted(rs) == list(range(10))
    assert len(list(RandomSampler(ds, replacement=True, num_samples=25))) == 25
    bs = DataLoader(ds, batch_sampler=BatchSampler(SequentialSampler(ds), 3, drop_last=False))
    assert [len(b[1]) for b in bs] == [3, 3, 3, 1] and len(bs) == 4
    with pytest.raises(ValueError, match="mutually exclusive with shuffle"):
        DataLoader(ds, sampler=SequentialSampler(ds), shuffle=True)
    with pytest.raises(ValueError, match="batch_sampler option is mutually exclusive"):
        DataLoader(ds, batch_size=4, batch_sampler=[[0, 1]])
    with pytest.raises(ValueError, match="without replacement"):
        WeightedRandomSampler(w, 6, replacement=False)


def test_modules_built_from_iterators_copy_and_check():
    import copy
    layers = nn.ModuleList(nn.Linear(3, 3) for _ in range(2))   # a generator expression
    copy.deepcopy(layers)
    net = nn.Sequential(*layers).double()
    check_module(net, np.random.default_rng(0).standard_normal((2, 3)))
    assert layers._init_args is None and net._init_args is not None

"""Tiny stand-ins for layers/optimisers other helpers are writing (ReLU, CrossEntropyLoss,
SGD, Adam). ``install(monkeypatch)`` adds them to refdl only where the real one is missing,
so once the real code is merged these tests run against it."""
import numpy as np

from refdl import nn, optim
from refdl.nn.module import Module


class ReLU(Module):
    def forward(self, x):
        self._mask = x > 0
        return x * self._mask

    def backward(self, g):
        return g * self._mask


class Dropout(Module):
    def __init__(self, p=0.5):
        super().__init__()
        self.p = p

    def forward(self, x):
        from refdl.random import get_rng
        if not self.training or self.p == 0:
            self._m = np.ones_like(x)
            return x
        self._m = (get_rng().random(x.shape) >= self.p).astype(x.dtype) / (1 - self.p)
        return x * self._m

    def backward(self, g):
        return g * self._m


class CrossEntropyLoss(Module):
    def forward(self, logits, y):
        z = logits - logits.max(axis=1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        self._p, self._y = np.exp(logp), y
        return -logp[np.arange(len(y)), y].mean()

    def backward(self, grad=None):
        g = self._p.copy()
        g[np.arange(len(self._y)), self._y] -= 1
        return g / len(self._y)


class _Opt:
    def __init__(self, params, lr):
        self.params = list(params)
        self.param_groups = [{"params": self.params, "lr": lr}]
        self.state = {}

    def zero_grad(self):
        for p in self.params:
            p.grad[...] = 0

    def state_dict(self):
        return {"state": {i: {k: v.copy() for k, v in self.state[id(p)].items()}
                          for i, p in enumerate(self.params) if id(p) in self.state},
                "param_groups": [{"lr": self.param_groups[0]["lr"],
                                  "params": list(range(len(self.params)))}]}

    def load_state_dict(self, sd):
        self.param_groups[0]["lr"] = sd["param_groups"][0]["lr"]
        self.state = {id(self.params[int(i)]): {k: np.array(v) for k, v in s.items()}
                      for i, s in sd["state"].items()}


class SGD(_Opt):
    def __init__(self, params, lr=0.01, momentum=0.0, **kw):
        super().__init__(params, lr)
        self.momentum = momentum

    def step(self):
        lr = self.param_groups[0]["lr"]
        for p in self.params:
            st = self.state.setdefault(id(p), {"momentum_buffer": np.zeros_like(p.data)})
            st["momentum_buffer"] = self.momentum * st["momentum_buffer"] + p.grad
            p.data -= lr * st["momentum_buffer"]


class Adam(_Opt):
    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, **kw):
        super().__init__(params, lr)
        self.b1, self.b2, self.eps = betas[0], betas[1], eps

    def step(self):
        lr = self.param_groups[0]["lr"]
        for p in self.params:
            st = self.state.setdefault(id(p), {"m": np.zeros_like(p.data),
                                               "v": np.zeros_like(p.data),
                                               "step": np.zeros(())})
            st["step"] = st["step"] + 1
            t = float(st["step"])
            st["m"] = self.b1 * st["m"] + (1 - self.b1) * p.grad
            st["v"] = self.b2 * st["v"] + (1 - self.b2) * p.grad ** 2
            mh = st["m"] / (1 - self.b1 ** t)
            vh = st["v"] / (1 - self.b2 ** t)
            p.data -= (lr * mh / (np.sqrt(vh) + self.eps)).astype(p.data.dtype)


def install(monkeypatch):
    for name, cls in (("ReLU", ReLU), ("Dropout", Dropout), ("CrossEntropyLoss", CrossEntropyLoss)):
        if not hasattr(nn, name):
            monkeypatch.setattr(nn, name, cls, raising=False)
    for name, cls in (("SGD", SGD), ("Adam", Adam)):
        if not hasattr(optim, name):
            monkeypatch.setattr(optim, name, cls, raising=False)


def WideMLP(num_classes=10, input_shape=(64,)):
    """A registry builder for tests: an MLP of another width."""
    from refdl.models.mlp import MLP
    return MLP(input_shape, num_classes, hidden=(32,))


class _Channels(Module):
    """(N, 1, H, W) -> (N, C, H, W): x * w_c + b_c per channel (a 1x1 'convolution')."""

    def __init__(self, c):
        from refdl.nn import Parameter
        super().__init__()
        self.weight = Parameter(np.linspace(-1, 1, c).astype(np.float32))
        self.bias = Parameter(np.zeros(c, np.float32))

    def forward(self, x):
        self._x = x
        return x * self.weight.data[:, None, None] + self.bias.data[:, None, None]

    def backward(self, g):
        self.weight.grad += (g * self._x).sum(axis=(0, 2, 3))
        self.bias.grad += g.sum(axis=(0, 2, 3))
        return (g * self.weight.data[:, None, None]).sum(axis=1, keepdims=True)


def TinyConvNet(num_classes=10, input_shape=(1, 8, 8)):
    """A registry builder for tests: an image model with 4-channel feature maps."""
    c, h, w = input_shape
    return nn.Sequential(_Channels(4), nn.Flatten(), nn.Linear(4 * h * w, num_classes))

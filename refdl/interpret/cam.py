r"""Saliency maps, Grad-CAM and Grad-CAM++ for refdl models.

Notation: a model maps an image x to class scores S (N, C), the score of class c is S^c.
A_k (h, w) is the k-th feature map of a chosen layer, g_k^ij = dS^c / dA_k^ij.

* Saliency (Simonyan et al. 2014): max over channels of |dS^c / dx|.
* Grad-CAM (Selvaraju et al. 2017): weights a_k = (1/hw) sum_ij g_k^ij,
  map = ReLU(sum_k a_k A_k).
* Grad-CAM++ (Chattopadhay et al. 2018), on the exponentiated score Y = exp(S):

      alpha_k^ij = d2Y_k^ij / (2 d2Y_k^ij + sum_ab A_k^ab d3Y_k^ij),
      w_k = sum_ij alpha_k^ij ReLU(dY/dA_k^ij),      map = ReLU(sum_k w_k A_k),

  where dmY_k^ij = d^m Y / (dA_k^ij)^m (the diagonal derivatives). When S is piecewise
  linear in A (ReLU/max-pool/linear layers after A) the published closed form holds:
  dY = e^S g, d2Y = e^S g^2, d3Y = e^S g^3, so alpha = g^2 / (2 g^2 + sum_ab A^ab g^3)
  ('closed' derivatives: first derivatives only). Otherwise the exact second and third
  derivatives are computed with refdl.autograd ('exact': the head after the layer is
  translated into engine ops by :func:`to_engine`). The common factor e^S > 0 of w_k is
  dropped (it scales the map of one image, nothing else).

Derivation and comparison: docs/derivations/gradcam.md.
"""
import numpy as np

from ..grad_mode import enable_grad
from ..nn.container import Sequential
from ..nn.module import Module

__all__ = ["capture", "saliency", "grad_cam", "grad_cam_pp", "grad_cam_weights",
           "grad_cam_pp_weights", "cam_from_weights", "score_backward",
           "exp_score_derivatives", "score_derivatives", "to_engine", "head_after"]


# -- finding a layer, capturing its activations and d score / d activations -----------------
def _named(model):
    return {n: m for n, m in model.named_modules() if n}


def _resolve(model, layer):
    mods = _named(model)
    if isinstance(layer, Module):
        for n, m in mods.items():
            if m is layer:
                return n, m
        raise ValueError(f"{type(model).__name__}: the given {type(layer).__name__} module "
                         "is not part of the model")
    if layer not in mods:
        listing = ", ".join(f"{n!r} ({type(m).__name__})" for n, m in mods.items())
        raise ValueError(f"{type(model).__name__} has no layer named {layer!r}; available "
                         f"layers: {listing}")
    return layer, mods[layer]


def _class_indices(scores, class_idx):
    scores = np.asarray(scores)
    if scores.ndim != 2:
        raise ValueError(f"interpret: the model must return class scores of shape (N, C), "
                         f"got {scores.shape}")
    n, c = scores.shape
    if class_idx is None:
        return np.argmax(scores, axis=1)
    idx = np.broadcast_to(np.asarray(class_idx), (n,))
    if not np.issubdtype(idx.dtype, np.integer):
        raise TypeError(f"interpret: class_idx must be an integer (or N integers), got "
                        f"{np.asarray(class_idx).dtype}")
    bad = (idx < 0) | (idx >= c)
    if bad.any():
        raise IndexError(f"interpret: class index {int(idx[bad][0])} is out of range for a "
                         f"model with {c} classes (scores of shape {scores.shape}); valid "
                         f"indices are 0..{c - 1}")
    return idx.astype(np.intp)


class capture:
    """Context manager recording a layer's output (forward) and d loss / d output (backward).

    It wraps the layer's ``forward`` and ``backward`` (instance attributes, removed on exit),
    so it works for any model whose backward calls its children's backward. Like the
    layer's own caches it keeps one entry per call: ``outputs[k]`` is the k-th recording
    forward's output and ``output_grads[k]`` the gradient of that same call (backwards run
    last in, first out, so they are stored back in forward order). ``activations`` and
    ``gradient`` are the single call's values; for a layer used several times they raise
    (a Grad-CAM of one call, not a silent mix of two).
    """

    def __init__(self, model, layer):
        self.name, self.module = _resolve(model, layer)
        self.outputs = []           # one per recording forward, in call order
        self._grads = []            # one per backward, in backward (reverse) order

    @property
    def output_grads(self):
        """dL/d(output) of each call, in forward order (backward visits them reversed)."""
        return self._grads[::-1]

    def _single(self, values, what):
        if not values:
            return None
        if len(values) > 1:
            raise ValueError(f"interpret: layer {self.name!r} was called {len(values)} times "
                             f"in one pass; its {what} is ambiguous. Use capture.outputs / "
                             "capture.output_grads (one entry per call), or a layer used once.")
        return values[0]

    @property
    def activations(self):
        return self._single(self.outputs, "activations")

    @property
    def gradient(self):
        return self._single(self._grads, "gradient")

    def __enter__(self):
        m = self.module
        fwd, bwd = m.forward, m.backward

        def forward(*inputs, **kw):
            out = fwd(*inputs, **kw)
            if m.recording:         # a forward that will have a backward
                self.outputs.append(out)
            return out

        def backward(grad_out, *more):
            self._grads.append(grad_out)
            return bwd(grad_out, *more)

        object.__setattr__(m, "forward", forward)
        object.__setattr__(m, "backward", backward)
        return self

    def __exit__(self, *exc):
        for attr in ("forward", "backward"):
            if attr in self.module.__dict__:
                object.__delattr__(self.module, attr)
        return False


def score_backward(model, x, class_idx, layer=None):
    """Run forward, backward of the one-hot class score; parameter grads and buffers (running
    statistics) are restored afterwards. (Call ``model.eval()`` first for BatchNorm and
    Dropout to act as at test time.)

    Returns (scores, class indices, dS/dx, activations, dS/dA) (the last two None without
    ``layer``).
    """
    saved = [(p, p.grad.copy()) for p in model.parameters()]
    buffers = [(m, n, np.array(b, copy=True)) for m in model.modules()
               for n, b in m._buffers.items() if b is not None]   # BatchNorm's running stats
    cap = capture(model, layer) if layer is not None else None
    try:
        if cap is not None:
            cap.__enter__()
        with enable_grad():     # an eval-mode model records its caches here too
            scores = model(x)
        idx = _class_indices(scores, class_idx)
        upstream = np.zeros_like(scores)
        upstream[np.arange(len(idx)), idx] = 1.0
        dx = model.backward(upstream)
    finally:
        if cap is not None:
            cap.__exit__(None, None, None)
        for p, g in saved:
            p.grad[...] = g
        for m, n, b in buffers:
            setattr(m, n, b)
    acts = grads = None
    if cap is not None:
        if cap.activations is None or cap.gradient is None:
            raise RuntimeError(f"interpret: layer {cap.name!r} was not used in the forward "
                               "or backward pass of the model")
        acts, grads = np.asarray(cap.activations), np.asarray(cap.gradient)
        if acts.ndim != 4:
            raise ValueError(f"interpret: layer {cap.name!r} outputs shape {acts.shape}; "
                             "Grad-CAM needs feature maps (N, K, h, w)")
    return scores, idx, dx, acts, grads


# -- the three maps --------------------------------------------------------------------------
def saliency(model, x, class_idx=None):
    """|dS^c/dx| maximised over channels: (N, H, W) for x (N, C_in, H, W)."""
    _, _, dx, _, _ = score_backward(model, x, class_idx)
    return np.max(np.abs(dx), axis=1)


def grad_cam_weights(grads):
    """a_k = mean_ij dS/dA_k^ij: (N, K) from (N, K, h, w)."""
    return grads.mean(axis=(2, 3))


def cam_from_weights(acts, weights, relu=True):
    """sum_k w_k A_k (then ReLU): (N, h, w)."""
    cam = np.einsum("nk,nkij->nij", weights, acts)
    return np.maximum(cam, 0) if relu else cam


def grad_cam_pp_weights(acts, d1, d2=None, d3=None):
    """Grad-CAM++ weights w_k = sum_ij alpha_k^ij ReLU(d1) with the published alpha.

    ``d1, d2, d3`` are the diagonal derivatives of Y (up to the common factor e^S); with
    ``d2 = d3 = None`` they are the closed form g^2, g^3 of a piecewise-linear score.
    Where the denominator is 0 (no gradient), alpha is 0.
    """
    if d2 is None:
        d2, d3 = d1 ** 2, d1 ** 3
    denom = 2.0 * d2 + acts.sum(axis=(2, 3), keepdims=True) * d3
    safe = np.where(denom != 0, denom, 1.0)
    alpha = np.where(denom != 0, d2 / safe, 0.0)
    return np.sum(alpha * np.maximum(d1, 0), axis=(2, 3)), alpha


def grad_cam(model, x, layer, class_idx=None, relu=True):
    """Grad-CAM maps (N, h, w) at the resolution of ``layer``'s output."""
    _, _, _, acts, grads = score_backward(model, x, class_idx, layer)
    return cam_from_weights(acts, grad_cam_weights(grads), relu)


def grad_cam_pp(model, x, layer, class_idx=None, derivatives="closed", relu=True):
    """Grad-CAM++ maps (N, h, w).

    ``derivatives='closed'``: the exp-score closed form (first derivatives only, exact
    when the layers after ``layer`` are piecewise linear). ``'exact'``: second and third
    diagonal derivatives by refdl.autograd through the layers after ``layer`` (which must
    be reachable by Sequential containers and supported by :func:`to_engine`).
    """
    scores, idx, _, acts, grads = score_backward(model, x, class_idx, layer)
    if derivatives == "closed":
        w, _ = grad_cam_pp_weights(acts, grads)
    elif derivatives == "exact":
        head = to_engine(head_after(model, layer))
        s1, s2, s3 = score_derivatives(head, acts, idx)
        y1, y2, y3 = exp_score_derivatives(s1, s2, s3)
        w, _ = grad_cam_pp_weights(acts, y1, y2, y3)
    else:
        raise ValueError(f"grad_cam_pp: derivatives must be 'closed' or 'exact', got "
                         f"{derivatives!r}")
    return cam_from_weights(acts, w, relu)


def exp_score_derivatives(s1, s2, s3):
    """Diagonal derivatives of Y = exp(S) divided by e^S: S', S'' + S'^2, S''' + 3S'S'' + S'^3."""
    return s1, s2 + s1 ** 2, s3 + 3 * s1 * s2 + s1 ** 3


# -- exact diagonal derivatives with refdl.autograd ----------------------------------------------
def score_derivatives(head, acts, class_idx, order=3):
    """Diagonal derivatives d^m S^c / (dA^ij)^m, m = 1..order, each (N, K, h, w).

    ``head`` maps an engine Tensor A (N, K, h, w) to scores (N, C); image n's score must
    depend on A[n] only. First derivatives by one backward; for each feature position e
    (K h w of them, shared by the batch) the second derivative by a backward through the
    gradient graph, and the third by one more.
    """
    from ..autograd import Tensor, grad

    acts = np.asarray(acts, dtype=np.float64)
    n = acts.shape[0]
    idx = np.asarray(class_idx, dtype=np.intp)
    A = Tensor(acts, requires_grad=True)
    scores = head(A)
    total = scores[np.arange(n), idx].sum()
    (g1,) = grad(total, A, create_graph=order > 1, retain_graph=True, allow_unused=True)
    d1 = g1.data if g1 is not None else np.zeros_like(acts)
    d2, d3 = np.zeros_like(acts), np.zeros_like(acts)
    if order == 1 or g1 is None or not g1.requires_grad:
        return (d1, d2, d3)[:order]
    flat1 = g1.reshape(n, -1)
    for e in range(flat1.shape[1]):
        (h,) = grad(flat1[:, e].sum(), A, create_graph=order > 2, retain_graph=True,
                    allow_unused=True)
        if h is None:
            continue
        d2.reshape(n, -1)[:, e] = h.data.reshape(n, -1)[:, e]
        if order > 2 and h.requires_grad:
            (t,) = grad(h.reshape(n, -1)[:, e].sum(), A, retain_graph=True, allow_unused=True)
            if t is not None:
                d3.reshape(n, -1)[:, e] = t.data.reshape(n, -1)[:, e]
    return (d1, d2, d3)[:order]


def head_after(model, layer):
    """The layers that follow ``layer`` (a dotted name through Sequential containers)."""
    name, _ = _resolve(model, layer)
    parts = name.split(".")
    rest = []
    node = model
    for i, p in enumerate(parts):
        if not isinstance(node, Sequential):
            raise NotImplementedError(
                f"head_after: {'.'.join(parts[:i]) or 'the model'} is a "
                f"{type(node).__name__}, not a Sequential: the layers after {name!r} are "
                "not a simple chain")
        kids = list(node.named_children())
        pos = [k for k, _ in kids].index(p)
        rest.insert(0, [m for _, m in kids[pos + 1:]])
        node = dict(kids)[p]
    return Sequential(*[m for level in rest for m in level])


def to_engine(module):
    """An engine function Tensor -> Tensor computing ``module``'s forward (eval mode).

    Supported: Sequential, Linear, Flatten, Identity, Dropout (identity), ReLU, LeakyReLU,
    ELU, Tanh, Sigmoid, Softplus, GELU, SiLU, AdaptiveAvgPool2d(1), GlobalAvgPool2d, GlobalMaxPool2d.
    """
    from ..autograd import Tensor
    from ..autograd import functional as AF
    from ..autograd import ops

    kind = type(module).__name__
    if isinstance(module, Sequential):
        fns = [to_engine(m) for m in module]

        def run(t):
            for f in fns:
                t = f(t)
            return t
        return run
    if kind == "Linear":
        W = Tensor(module.weight.data.astype(np.float64))
        b = None if module.bias is None else Tensor(module.bias.data.astype(np.float64))
        return lambda t: AF.linear(t, W, b)
    if kind == "Flatten":
        def flat(t):
            s, e = module.start_dim % t.ndim, module.end_dim % t.ndim
            return t.reshape(t.shape[:s] + (-1,) + t.shape[e + 1:])
        return flat
    if kind in ("Identity", "Dropout", "Dropout2d"):
        return lambda t: t
    if kind == "GlobalAvgPool2d":
        return lambda t: ops.mean(t, axis=(2, 3))
    if kind == "GlobalMaxPool2d":
        return lambda t: ops.max(t.reshape(t.shape[0], t.shape[1], -1), axis=-1)
    if kind == "AdaptiveAvgPool2d" and tuple(np.atleast_1d(module.output_size)) in ((1,), (1, 1)):
        return lambda t: ops.mean(t, axis=(2, 3), keepdims=True)
    simple = {"ReLU": AF.relu, "Tanh": AF.tanh, "Sigmoid": AF.sigmoid, "SiLU": AF.silu}
    if kind in simple:
        return simple[kind]
    if kind == "LeakyReLU":
        return lambda t: AF.leaky_relu(t, module.negative_slope)
    if kind == "ELU":
        return lambda t: AF.elu(t, module.alpha)
    if kind == "GELU":
        return lambda t: AF.gelu(t, module.approximate)
    if kind == "Softplus" and module.beta == 1.0:
        return AF.softplus
    raise NotImplementedError(f"to_engine: no engine translation for {kind}; supported: "
                              "Sequential, Linear, Flatten, Identity, Dropout, ReLU, "
                              "LeakyReLU, ELU, Tanh, Sigmoid, Softplus(beta=1), GELU, SiLU, "
                              "AdaptiveAvgPool2d(1), GlobalAvgPool2d, GlobalMaxPool2d")

r"""U-Net (Ronneberger et al., 2015) in 2-D and 3-D, and a video U-Net over (frames, height, width).

With depth N, M convolutions per level and channels c_l = base * 2^l:

    encoder, l = 0 .. N-1:   e_l = enc_l(h)          M x (conv k, padding k//2 - [norm] - ReLU)
                             h   = pool_l(e_l)       max-pool, kernel = stride = pool_kernel
    bottleneck:              h   = bottleneck(h)     M convs to c_N channels
    decoder, l = N-1 .. 0:   u   = up_l(h)           c_{l+1} -> c_l, spatial x pool_kernel:
                                                     ConvTranspose (kernel = stride = pool)
                                                     or nearest Upsample + 3x3 conv
                             h   = dec_l(cat_l(e_l, u))   skip: 2 c_l channels -> c_l
    head:                    y   = conv 1x1 (c_0 -> out_channels)

Backward: the chain rule through the same modules in reverse. Each encoder output e_l
fans out (to the pool and to the skip connection), so its gradient is the sum

    dL/de_l = pool_l.backward(dL/dh_l) + dL/de_l|_from cat_l.

Spatial sizes must be divisible by pool_kernel^N: otherwise an up-sampled map and its
skip differ and the forward raises a ValueError naming the level and both shapes.
Derivation and the video shapes: docs/derivations/unet.md
"""
import math

import numpy as np

from .. import nn
from ..nn._validate import check_float, layer_name

__all__ = ["UNet", "video_unet", "unet_shapes"]


def _tuple(v, dim):
    return tuple(int(a) for a in v) if isinstance(v, (tuple, list)) else (int(v),) * dim


def _layer(kind, dim):
    return getattr(nn, f"{kind}{dim}d")


class ConvBlock(nn.Sequential):
    """M x (Conv{dim}d(k, padding k//2) - [norm] - ReLU): a U-Net level's convolutions."""

    def __init__(self, in_channels, out_channels, convs=2, dim=2, kernel_size=3, norm=None):
        layers = []
        conv = _layer("Conv", dim)
        for i in range(convs):
            layers.append(conv(in_channels if i == 0 else out_channels, out_channels,
                               kernel_size, padding=kernel_size // 2, bias=norm is None))
            if norm == "batch":
                layers.append(_layer("BatchNorm", dim)(out_channels))
            elif norm == "group":
                layers.append(nn.GroupNorm(math.gcd(8, out_channels), out_channels))
            elif norm == "instance":
                layers.append(_layer("InstanceNorm", dim)(out_channels, affine=True))
            elif norm is not None:
                raise ValueError(f"UNet: norm must be None, 'batch', 'group' or 'instance', "
                                 f"got {norm!r}")
            layers.append(nn.ReLU())
        super().__init__(*layers)


class UNet(nn.Module):
    """U-Net: ``depth`` encoder levels, a bottleneck, ``depth`` decoder levels.

    Parameters: ``in_channels``, ``out_channels``; ``depth`` N (number of poolings);
    ``convs_per_level`` M; ``base_channels`` c_0; ``dim`` 2 (N, C, H, W) or 3
    (N, C, D, H, W); ``up_mode`` "transpose" (up-convolution) or "nearest" (Upsample +
    conv); ``pool_kernel`` an int or a per-axis tuple (e.g. (1, 2, 2) pools only H, W of a
    video, keeping its frames); ``kernel_size`` of the convolutions (odd); ``norm`` None,
    "batch", "group" (GroupNorm with gcd(8, channels) groups) or "instance".
    """

    def __init__(self, in_channels=1, out_channels=1, depth=3, convs_per_level=2,
                 base_channels=16, dim=2, up_mode="transpose", pool_kernel=2, kernel_size=3,
                 norm=None):
        super().__init__()
        if dim not in (2, 3):
            raise ValueError(f"UNet: dim must be 2 or 3, got {dim}")
        if up_mode not in ("transpose", "nearest"):
            raise ValueError(f"UNet: up_mode must be 'transpose' or 'nearest', got {up_mode!r}")
        if depth < 1 or convs_per_level < 1 or kernel_size % 2 == 0:
            raise ValueError(f"UNet: need depth >= 1, convs_per_level >= 1 and an odd "
                             f"kernel_size, got {depth}, {convs_per_level}, {kernel_size}")
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.depth, self.convs_per_level, self.dim = int(depth), int(convs_per_level), dim
        self.base_channels, self.up_mode = int(base_channels), up_mode
        self.pool_kernel = _tuple(pool_kernel, dim)
        ch = [self.base_channels * 2 ** l for l in range(depth + 1)]
        self.channels = ch
        M, k = convs_per_level, kernel_size
        self.encoders = nn.ModuleList([ConvBlock(in_channels if l == 0 else ch[l - 1], ch[l],
                                                 M, dim, k, norm) for l in range(depth)])
        self.pools = nn.ModuleList([_layer("MaxPool", dim)(self.pool_kernel,
                                                           stride=self.pool_kernel)
                                    for _ in range(depth)])
        self.bottleneck = ConvBlock(ch[depth - 1], ch[depth], M, dim, k, norm)
        ups, cats, decs = [], [], []
        for l in reversed(range(depth)):
            if up_mode == "transpose":
                ups.append(_layer("ConvTranspose", dim)(ch[l + 1], ch[l], self.pool_kernel,
                                                        stride=self.pool_kernel))
            else:
                ups.append(nn.Sequential(
                    nn.Upsample(scale_factor=self.pool_kernel, mode="nearest"),
                    _layer("Conv", dim)(ch[l + 1], ch[l], k, padding=k // 2)))
            cats.append(nn.Concat(dim=1))
            decs.append(ConvBlock(2 * ch[l], ch[l], M, dim, k, norm))
        self.ups, self.cats, self.decoders = (nn.ModuleList(ups), nn.ModuleList(cats),
                                              nn.ModuleList(decs))
        self.head = _layer("Conv", dim)(ch[0], out_channels, 1)

    def extra_repr(self):
        return (f"in_channels={self.in_channels}, out_channels={self.out_channels}, "
                f"depth={self.depth}, convs_per_level={self.convs_per_level}, "
                f"dim={self.dim}, up_mode={self.up_mode!r}")

    def forward(self, x):
        x = check_float(self, x)
        if x.ndim != self.dim + 2 or x.shape[1] != self.in_channels:
            axes = "H, W" if self.dim == 2 else "D, H, W"
            raise ValueError(f"{layer_name(self)}: expected input of shape (N, "
                             f"{self.in_channels}, {axes}), got {tuple(x.shape)}")
        skips, h = [], x
        for enc, pool in zip(self.encoders, self.pools):
            h = enc(h)
            skips.append(h)
            h = pool(h)
        h = self.bottleneck(h)
        for j, l in enumerate(reversed(range(self.depth))):
            u = self.ups[j](h)
            s = skips[l]
            if u.shape[2:] != s.shape[2:]:
                raise ValueError(
                    f"{layer_name(self)}: skip connection at level {l}: the up-sampled "
                    f"decoder map has shape {tuple(u.shape)} but the encoder's skip has shape "
                    f"{tuple(s.shape)}; the input's spatial size {tuple(x.shape[2:])} must be "
                    f"divisible by pool_kernel^depth = "
                    f"{tuple(p ** self.depth for p in self.pool_kernel)}")
            h = self.decoders[j](self.cats[j](s, u))
        return self.head(h)

    def backward(self, grad_out):
        """Decoders in reverse; each Concat splits its gradient into the skip part and the
        up-sampled part, and an encoder output, which fans out to the pool and the skip, gets
        the sum of both gradients (docs/derivations/unet.md)."""
        g = self.head.backward(grad_out)
        g_skip = [None] * self.depth
        for j in reversed(range(self.depth)):               # decoder j works on level l
            l = self.depth - 1 - j
            g_s, g_u = self.cats[j].backward(self.decoders[j].backward(g))
            g_skip[l] = g_s
            g = self.ups[j].backward(g_u)
        g = self.bottleneck.backward(g)
        for l in reversed(range(self.depth)):
            g = self.pools[l].backward(g) + g_skip[l]     # e_l fans out: pool and skip
            g = self.encoders[l].backward(g)
        return g

    def shape_table(self, input_shape):
        """Every intermediate shape for an input of ``input_shape`` (with the batch):
        a list of (stage, shape) pairs, computed by a forward pass."""
        return unet_shapes(self, input_shape)


def unet_shapes(model, input_shape):
    """[(stage, shape)] of a U-Net's forward: each encoder conv, pool, the bottleneck, each
    up-sampling, its skip, the concatenation and each decoder conv, and the output."""
    def block(seq, h, label):
        k = 0
        for m in seq:
            h = m(h)
            if isinstance(m, nn.ReLU):          # one conv (- norm) - ReLU unit done
                k += 1
                rows.append((f"{label} conv {k}", h.shape))
        return h

    x = np.zeros(input_shape, dtype=np.float32)
    rows = [("input", x.shape)]
    skips, h = [], x
    for l, (enc, pool) in enumerate(zip(model.encoders, model.pools)):
        h = block(enc, h, f"encoder {l + 1}")
        skips.append(h)
        h = pool(h)
        rows.append((f"encoder {l + 1} pool", h.shape))
    h = block(model.bottleneck, h, "bottleneck")
    for j, l in enumerate(reversed(range(model.depth))):
        u = model.ups[j](h)
        rows.append((f"decoder {l + 1} up", u.shape))
        rows.append((f"decoder {l + 1} skip (from encoder {l + 1})", skips[l].shape))
        h = model.cats[j](skips[l], u)
        rows.append((f"decoder {l + 1} concat", h.shape))
        h = block(model.decoders[j], h, f"decoder {l + 1}")
    h = model.head(h)
    rows.append(("output (1x1 conv)", h.shape))
    return [(name, tuple(int(s) for s in shape)) for name, shape in rows]


def video_unet(in_channels=3, out_channels=3, depth=3, convs_per_level=2, base_channels=16,
               up_mode="transpose", norm=None):
    """A video U-Net: input (N, 3, 10, 32, 32) = 10 frames of 32x32 RGB
    in PyTorch's (N, C, D, H, W) layout; 3x3x3 convolutions over (frames, height, width);
    pooling (1, 2, 2) halves height and width and keeps the 10 frames (10 is not divisible
    by 2^3). depth = 3: 32 -> 16 -> 8 -> 4 at the bottleneck and back."""
    return UNet(in_channels, out_channels, depth, convs_per_level, base_channels, dim=3,
                up_mode=up_mode, pool_kernel=(1, 2, 2), kernel_size=3, norm=norm)

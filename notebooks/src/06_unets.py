# %% [markdown]
# # 6. U-Nets
#
# A U-Net encodes by convolutions and pooling, decodes by transposed (up-)convolutions,
# and concatenates each encoder level's features into the decoder level of the same
# size. Two facts make its backward: a transposed convolution is the adjoint of a
# convolution, and a concatenation's backward splits the gradient.

# %% [markdown]
# ## The derivation
#
# **The transposed convolution is the adjoint.** A convolution is linear, $y = C x$ for a
# (huge, sparse) matrix $C$. The transposed convolution with the same weights computes
# $C^\top y$, which is exactly what the convolution's input gradient computes:
#
# $$
# \langle C x, y\rangle = \langle x, C^\top y\rangle, \qquad
# \frac{\partial L}{\partial x}\Big|_{\text{conv}} = C^\top g = \operatorname{convT}(g).
# $$
#
# So the up-convolution's forward is the convolution's backward and vice versa.
#
# **Skip connections concatenate:** $z = [u; s]$ along the channels, so
# $\partial L/\partial u$ and $\partial L/\partial s$ are the two slices of
# $\partial L/\partial z$; the encoder feature $s$ also feeds the next encoder level (it
# *fans out*), so its total gradient is the **sum** of the slice and the gradient coming
# back down the encoder:
#
# $$
# \frac{\partial L}{\partial s} = \left(\frac{\partial L}{\partial z}\right)_{\text{skip channels}} +
# \left(\frac{\partial\,\text{pool}}{\partial s}\right)^{\!\top} \frac{\partial L}{\partial\,\text{pool}(s)} .
# $$
#
# Pages: `docs/derivations/unet.md`, `conv.md`, `residual.md`.

# %% [markdown]
# ## The code, read from the library

# %%
from refdl.models.unet import UNet

show(UNet.forward, UNet.backward)

# %% [markdown]
# ## The adjoint, numerically, and one U-Net's shapes

# %%
rng = np.random.default_rng(0)
conv = nn.Conv2d(1, 1, 3, stride=2, padding=1, bias=False).to(np.float64)
up = nn.ConvTranspose2d(1, 1, 3, stride=2, padding=1, bias=False).to(np.float64)
up.weight.data[...] = conv.weight.data          # the same kernel
x, y = rng.standard_normal((1, 1, 5, 5)), rng.standard_normal((1, 1, 3, 3))
print("<conv(x), y>  =", float(np.sum(conv(x) * y)))
print("<x, convT(y)> =", float(np.sum(x * up(y))))
print("conv.backward(y) equals convT(y):", np.allclose(conv.backward(y), up(y)))

refdl.manual_seed(0)
unet = UNet(in_channels=1, out_channels=1, depth=2, base_channels=4)
for name, shape in unet.shape_table((1, 1, 16, 16)):
    print(f"  {name:<28} {shape}")

# %% [markdown]
# ## The gradient check of a whole (tiny) U-Net

# %%
tiny = UNet(in_channels=1, out_channels=1, depth=2, convs_per_level=1, base_channels=1)
print(check_module(tiny, rng.standard_normal((1, 1, 4, 4))))

# %% [markdown]
# ## A short training run: segmenting shapes
#
# 16x16 images of squares, circles and triangles; the target is each shape's mask. A U-Net
# with two levels, per-pixel binary cross-entropy on the logits, Adam, 80 steps of 8 images:

# %%
import matplotlib.pyplot as plt
from refdl.data import make_shapes

ds = make_shapes(200, size=16, min_radius=3, max_radius=5, generator=np.random.default_rng(0))
imgs, masks = ds.images, ds.masks[:, None].astype(np.float32)
refdl.manual_seed(0)
model = UNet(in_channels=1, out_channels=1, depth=2, base_channels=4)
opt, bce = optim.Adam(model.parameters(), lr=1e-2), nn.BCEWithLogitsLoss()
gen, losses = np.random.default_rng(1), []
for step in range(80):
    idx = gen.integers(0, 160, 8)
    loss = bce(model(imgs[idx]), masks[idx])
    opt.zero_grad(); model.backward(bce.backward()); opt.step()
    losses.append(float(loss))
model.eval()
pred = model(imgs[160:166]) > 0
iou = (pred & (masks[160:166] > 0)).sum() / (pred | (masks[160:166] > 0)).sum()
fig, axes = plt.subplots(3, 7, figsize=(9, 4))
axes[0, 0].plot(losses); axes[0, 0].set_title("loss", fontsize=8)
for r in range(1, 3):
    axes[r, 0].axis("off")
for i in range(6):
    for r, (im, t) in enumerate([(imgs[160 + i, 0], "image"), (masks[160 + i, 0], "mask"),
                                 (pred[i, 0], "predicted")]):
        axes[r, i + 1].imshow(im, cmap="gray"); axes[r, i + 1].axis("off")
        axes[r, i + 1].set_title(t, fontsize=7)
fig.suptitle(f"held-out IoU {iou:.2f} after 80 steps"); plt.show()

# %% [markdown]
# ## Exercises
#
# 1. The output size of `ConvTranspose2d(1, 1, 2, stride=2)` on an input of height 5?
# 2. A concatenation of $u$ with 3 channels and $s$ with 2: the channels of
#    $\partial L/\partial s$ are which slice of $\partial L/\partial z$? (give the index range as a tuple (start, stop))
# 3. $\langle x, \operatorname{convT}(y)\rangle - \langle \operatorname{conv}(x), y\rangle$ for
#    any $x, y$ (same kernel, no bias)?

# %%
answer_1 = None
answer_2 = None
answer_3 = None

# %%
def checks():
    check("exercise 1", answer_1, nn.ConvTranspose2d(1, 1, 2, stride=2)(np.zeros((1, 1, 5, 5))).shape[-1])
    cat = nn.Concat(1)
    cat(np.zeros((1, 3, 2, 2)), np.zeros((1, 2, 2, 2)))
    gz = np.arange(20.0).reshape(1, 5, 2, 2)
    ds_ = cat.backward(gz)[1]
    start = int(ds_[0, 0, 0, 0] // 4)
    check("exercise 2", answer_2, (start, start + ds_.shape[1]))
    check("exercise 3", answer_3, float(np.sum(x * up(y))) - float(np.sum(conv(x) * y)), atol=1e-10)

checks()

# %% [markdown]
# ## Solutions

# %%
answer_1 = 10          # (5 - 1) * 2 + 2
answer_2 = (3, 5)      # the channels after u's 3
answer_3 = 0.0         # the adjoint identity
checks()

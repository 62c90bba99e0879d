# %% [markdown]
# # 13. Grad-CAM: where a CNN looks
#
# Grad-CAM weights the feature maps of a convolutional layer by how much the class score
# depends on them, and keeps the positive part: a coarse map of the evidence for a class.

# %% [markdown]
# ## The derivation
#
# For a class score $y^c$ and the $K$ feature maps $A^k$ ($h\times w$, $Z = hw$ positions) of
# a chosen layer:
#
# $$
# \alpha_k^c = \frac1Z \sum_{i,j} \frac{\partial y^c}{\partial A^k_{ij}}, \qquad
# L^c_\text{Grad-CAM} = \operatorname{ReLU}\!\left(\sum_k \alpha_k^c A^k\right).
# $$
#
# The gradients come from one backward pass from $y^c$ down to the layer. If the head after
# the layer is global average pooling followed by a linear map $y^c = \sum_k w^c_k
# \frac1Z\sum_{ij}A^k_{ij}$, then $\partial y^c/\partial A^k_{ij} = w^c_k/Z$ and Grad-CAM is the
# class activation map (CAM) up to a constant. Grad-CAM++ replaces the plain average by
# weights built from second and third derivatives of $\exp(y^c)$. A **saliency map** is
# $|\partial y^c/\partial x|$ at the input. Page: `docs/derivations/gradcam.md`.

# %% [markdown]
# ## The code, read from the library

# %%
from refdl import interpret

show(interpret.grad_cam, interpret.grad_cam_weights, interpret.cam_from_weights)

# %% [markdown]
# ## A tiny example: a linear head over two feature maps

# %%
import sys
from pathlib import Path
sys.path.insert(0, str(Path.cwd().parent))   # the repository: experiments/ sits above refdl
from experiments.gradcam_shapes import make_cnn, train_cnn

A = np.zeros((1, 2, 3, 3))
A[0, 0, 0, 0] = 3.0          # map 0 fires top-left
A[0, 1, 2, 2] = 1.0          # map 1 fires bottom-right
head = nn.Sequential(nn.Identity(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                     nn.Linear(2, 2)).to(np.float64)            # layer "0" outputs A itself
head[3].weight.data[...] = [[1.0, -1.0], [-1.0, 2.0]]
head[3].bias.data[...] = 0.0
scores = head(A)
grads = head.backward(np.array([[1.0, 0.0]]))      # d y^0 / d A
alpha = grads.mean(axis=(2, 3))
print("scores", scores, "\nalpha for class 0 =", alpha, "(w / Z =", head[3].weight.data[0] / 9, ")")
print("Grad-CAM for class 0:\n", np.maximum((alpha[0][:, None, None] * A[0]).sum(0), 0))
print("library grad_cam:\n", interpret.grad_cam(head, A, layer="0", class_idx=np.array([0]))[0])

# %% [markdown]
# ## The gradient check behind the maps
#
# The saliency map is an input gradient; compare it with central differences of the score:

# %%
from refdl.gradcheck import numeric_gradient

refdl.manual_seed(0)
cnn = make_cnn(dtype=np.float64, generator=np.random.default_rng(0))
xin = np.random.default_rng(1).random((1, 1, 8, 8))
cnn.eval()
analytic = interpret.saliency(cnn, xin, class_idx=np.array([2]))
numeric = np.abs(numeric_gradient(lambda: float(cnn(xin)[0, 2]), xin))
print("max |saliency - |numeric d y / d x|| =", np.abs(analytic - numeric).max())
print(check_module(nn.Sequential(*list(cnn)[:4]), xin))

# %% [markdown]
# ## A short training run: shapes, then where the network looks

# %%
from refdl.data import make_shapes

rng = np.random.default_rng(0)
train = make_shapes(300, size=24, generator=rng)
test = make_shapes(8, size=24, generator=rng)
model = make_cnn(generator=rng)
losses = train_cnn(model, train.images, train.labels, epochs=6, lr=1e-2, generator=rng, progress=True)
model.eval()
acc = np.mean(model(test.images).argmax(1) == test.labels)
maps = {"Grad-CAM": interpret.grad_cam(model, test.images, layer="7"),
        "saliency": interpret.saliency(model, test.images)}
plot.plot_heatmaps(test.images, maps, boxes=test.boxes,
                   title=f"final loss {np.mean(losses[-5:]):.2f}, accuracy on these 8: {acc:.2f}")

# %% [markdown]
# ## Exercises
#
# 1. For the tiny head above, $\alpha^1$ (class 1's weights for the two maps)?
# 2. The Grad-CAM value at the top-left position for class 1?
# 3. Without the ReLU, the Grad-CAM value at the top-left for class 1?

# %%
answer_1 = None
answer_2 = None
answer_3 = None

# %%
def checks():
    head(A)                                    # a forward (training mode) before each backward
    h = head.backward(np.array([[0.0, 1.0]]))
    check("exercise 1", answer_1, h.mean(axis=(2, 3))[0])
    check("exercise 2", answer_2, interpret.grad_cam(head, A, layer="0", class_idx=np.array([1]))[0, 0, 0])
    check("exercise 3", answer_3, interpret.grad_cam(head, A, layer="0", class_idx=np.array([1]), relu=False)[0, 0, 0])

checks()

# %% [markdown]
# ## Solutions

# %%
answer_1 = [-1 / 9, 2 / 9]     # w^1 / Z
answer_2 = 0.0                 # -1/9 * 3 < 0, cut by the ReLU
answer_3 = -3 / 9
checks()

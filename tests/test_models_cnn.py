"""Whole CNNs: residual blocks, ResNet, LeNet-5, VGG — shapes, parameter counts, state_dict
keys, gradient checks of whole small models, errors."""
import numpy as np
import pytest

import refdl
from refdl import nn
from refdl.gradcheck import check_module

pytestmark = pytest.mark.usefixtures("single_blas_thread")   # tests/conftest.py


def rng(s=7):
    return np.random.default_rng(s)


def perturb_bn(model, seed=3):
    """Non-trivial affine and running statistics in every BatchNorm (so eval mode is not
    the identity and gamma != 1 is exercised)."""
    r = rng(seed)
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)):
            m.weight.data[...] = r.uniform(0.5, 1.5, m.weight.shape)
            m.bias.data[...] = r.normal(0.2, 0.5, m.bias.shape)
            m.running_mean[...] = r.normal(0, 0.3, m.running_mean.shape)
            m.running_var[...] = r.uniform(0.5, 2.0, m.running_var.shape)
    return model


# -- blocks -------------------------------------------------------------------------------
def test_basic_block_shapes_and_projection():
    refdl.manual_seed(0)
    same = nn.BasicBlock(4, 4)
    assert same.downsample is None
    assert same(rng().standard_normal((2, 4, 6, 6)).astype(np.float32)).shape == (2, 4, 6, 6)
    down = nn.BasicBlock(4, 8, stride=2)
    proj = down.downsample[0]
    assert isinstance(proj, nn.Conv2d) and proj.kernel_size in (1, (1, 1)) and \
        proj.stride in (2, (2, 2))
    assert down(rng().standard_normal((2, 4, 6, 6)).astype(np.float32)).shape == (2, 8, 3, 3)
    assert list(down.state_dict())[:2] == ["conv1.weight", "bn1.weight"]
    assert "downsample.0.weight" in down.state_dict() and "downsample.1.running_var" in \
        down.state_dict()
    bott = nn.Bottleneck(8, 2)            # 8 == 2 * 4: identity shortcut
    assert bott.downsample is None
    assert bott(rng().standard_normal((1, 8, 4, 4)).astype(np.float32)).shape == (1, 8, 4, 4)


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("make,shape", [
    (lambda: nn.BasicBlock(2, 2), (2, 2, 3, 3)),
    (lambda: nn.BasicBlock(2, 3, stride=2), (2, 2, 4, 4)),
    (lambda: nn.Bottleneck(8, 2), (2, 8, 3, 3)),
    (lambda: nn.Bottleneck(2, 2, stride=2), (2, 2, 4, 4)),
])
def test_residual_block_gradcheck(make, shape, mode):
    refdl.manual_seed(1)
    block = perturb_bn(make()).train(mode == "train")
    check_module(block, rng(2).standard_normal(shape))


def test_plain_block_without_norm_gradcheck():
    refdl.manual_seed(2)
    block = nn.BasicBlock(2, 2, norm_layer=nn.Identity, residual=False)
    assert block.downsample is None and not hasattr(block.bn1, "weight")
    check_module(block, rng(3).standard_normal((1, 2, 3, 3)))


# -- ResNet -------------------------------------------------------------------------------
def tiny_resnet():
    refdl.manual_seed(0)
    from refdl.models.resnet import ResNet
    return perturb_bn(ResNet(nn.BasicBlock, [1, 1], num_classes=3,
                                                 in_channels=1, widths=(2, 3), stem="cifar"))


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_tiny_resnet_whole_model_gradcheck(mode):
    model = tiny_resnet().train(mode == "train")
    check_module(model, rng(4).standard_normal((2, 1, 4, 4)))


def test_resnet18_layout_matches_torchvision():
    from refdl.models.resnet import resnet18
    refdl.manual_seed(0)
    m = resnet18()
    assert m.num_parameters() == 11_689_512          # torchvision's resnet18
    keys = list(m.state_dict())
    for k in ["conv1.weight", "bn1.running_mean", "layer1.0.conv1.weight",
              "layer2.0.downsample.0.weight", "layer2.0.downsample.1.bias",
              "layer4.1.bn2.num_batches_tracked", "fc.weight", "fc.bias"]:
        assert k in keys
    assert "layer1.0.downsample.0.weight" not in keys
    y = m.eval()(rng().standard_normal((1, 3, 32, 32)).astype(np.float32))
    assert y.shape == (1, 1000)


def test_resnet_small_shapes():
    from refdl.models.resnet import ResNetSmall
    refdl.manual_seed(0)
    m = ResNetSmall(num_classes=10, input_shape=(1, 8, 8))
    info = refdl.summary(m, (2, 1, 8, 8), print_fn=None)
    shapes = {r["name"]: r["output_shape"] for r in info["rows"]}
    assert shapes["layer1"] == (2, 16, 8, 8) and shapes["layer2"] == (2, 32, 4, 4)
    assert shapes["fc"] == (2, 10)
    m32 = ResNetSmall(num_classes=10, input_shape=(3, 32, 32))
    assert len([n for n, _ in m32.named_children() if n.startswith("layer")]) == 3
    with pytest.raises(ValueError, match=r"ResNet\(stem='cifar', num_classes=10\): expected "
                                         r"input of shape \(N, 1, H, W\), got \(2, 3, 8, 8\)"):
        m(np.zeros((2, 3, 8, 8), dtype=np.float32))


def test_registry_builds_models():
    from refdl.models import get_model
    for name in ("lenet5", "resnet_small", "vgg_small", "vit"):
        m = get_model(name, num_classes=10, input_shape=(1, 8, 8))
        assert m.eval()(np.zeros((2, 1, 8, 8), dtype=np.float32)).shape == (2, 10)


# -- LeNet-5, VGG ----------------------------------------------------------------------------
@pytest.mark.parametrize("shape,flat", [((1, 28, 28), 400), ((1, 32, 32), 400), ((1, 8, 8), 64)])
def test_lenet5_shapes(shape, flat):
    from refdl.models.lenet import LeNet5
    refdl.manual_seed(0)
    m = LeNet5(10, shape)
    assert m.classifier[1].in_features == flat
    assert m(np.zeros((2,) + shape, dtype=np.float32)).shape == (2, 10)


def test_lenet5_classic_parameter_count():
    from refdl.models.lenet import LeNet5
    # 156 + 2416 + 48120 + 10164 + 850 (LeCun's C1, C3 full connectivity, F5, F6, output)
    assert LeNet5(10, (1, 32, 32), activation="tanh", pool="avg").num_parameters() == 61_706


def test_lenet5_input_gradcheck():
    from refdl.models.lenet import LeNet5
    refdl.manual_seed(0)
    m = LeNet5(4, (1, 8, 8), activation="tanh", pool="avg")
    check_module(m, rng().standard_normal((1, 1, 8, 8)), params=False)


def test_vgg_small_shapes_and_input_gradcheck():
    from refdl.models.vgg import VGG, VGGSmall, vgg11
    refdl.manual_seed(0)
    m = VGGSmall(10, (1, 8, 8))
    assert m(np.zeros((3, 1, 8, 8), dtype=np.float32)).shape == (3, 10)
    assert m.classifier[1].in_features == 32 * 2 * 2
    # torchvision's VGG-11 has 132,863,336 parameters; built at 32x32 (1x1 final maps)
    # only the first classifier layer shrinks from 25088 x 4096 to 512 x 4096.
    assert vgg11(input_shape=(3, 32, 32)).num_parameters() == \
        132_863_336 - (25088 - 512) * 4096
    tiny = perturb_bn(VGG([2, "M", 3], num_classes=3, input_shape=(1, 4, 4), batch_norm=True,
                          hidden=(4,)))
    check_module(tiny, rng().standard_normal((2, 1, 4, 4)))


# -- training on the digits ---------------------------------------------------------------
def test_resnet_small_trains_on_digits_with_refdl_train():
    """ResNetSmall on the 8x8 digits (1,437 train / 360 test) through refdl.train.fit:
    Adam 1e-3 with cosine decay, batch 32, 5 epochs (measured 98.3 % test accuracy; 15
    epochs of examples/train_resnet_digits.py reach 99.2 %)."""
    from refdl.data import DataLoader, TensorDataset, load_digits
    from refdl.models.resnet import ResNetSmall
    from refdl.optim import Adam
    from refdl.optim.lr_scheduler import CosineAnnealingLR
    from refdl.train import evaluate, fit
    xtr, ytr, xte, yte = load_digits()
    refdl.manual_seed(0)
    model = ResNetSmall(num_classes=10, input_shape=(1, 8, 8))
    opt = Adam(model.parameters(), lr=1e-3)
    train = DataLoader(TensorDataset(xtr, ytr), batch_size=32, shuffle=True,
                       generator=np.random.default_rng(0))
    test = DataLoader(TensorDataset(xte, yte), batch_size=360)
    fit(model, nn.CrossEntropyLoss(), opt, train, epochs=5,
        scheduler=CosineAnnealingLR(opt, T_max=5), progress=False)
    acc = evaluate(model, test)["accuracy"]
    assert acc >= 0.97, acc

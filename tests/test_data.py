"""refdl.data: datasets, DataLoader, digits, IDX files, generated sets, transforms."""
import gzip

import numpy as np
import pytest

import refdl
from refdl.data import (Compose, DataLoader, IDXError, Normalize, RandomCrop,
                        RandomHorizontalFlip, TensorDataset, load_digits, load_fashion_mnist,
                        load_mnist, make_grid, make_moons, make_ring, make_spirals,
                        random_split, read_idx, write_idx)


def ds(n=10):
    return TensorDataset(np.arange(n, dtype=np.float32).reshape(n, 1), np.arange(n))


def test_tensor_dataset_and_errors():
    d = ds(5)
    assert len(d) == 5
    x, y = d[3]
    assert x.tolist() == [3.0] and y == 3
    with pytest.raises(ValueError, match="same first dimension"):
        TensorDataset(np.zeros((3, 2)), np.zeros(4))


def test_loader_batches_and_drop_last():
    batches = list(DataLoader(ds(10), batch_size=4))
    assert [len(b[1]) for b in batches] == [4, 4, 2]
    assert np.concatenate([b[1] for b in batches]).tolist() == list(range(10))
    assert len(DataLoader(ds(10), batch_size=4)) == 3
    ld = DataLoader(ds(10), batch_size=4, drop_last=True)
    assert len(ld) == 2 and [len(b[1]) for b in ld] == [4, 4]
    with pytest.raises(ValueError, match="batch_size"):
        DataLoader(ds(), batch_size=0)


def test_shuffle_is_seeded_and_changes_each_epoch():
    def order(seed):
        refdl.manual_seed(seed)
        ld = DataLoader(ds(20), batch_size=5, shuffle=True)
        return [np.concatenate([b[1] for b in ld]).tolist() for _ in range(2)]
    a, b = order(3), order(3)
    assert a == b                          # manual_seed repeats it
    assert a[0] != a[1]                    # a new order each epoch
    assert sorted(a[0]) == list(range(20))
    g1 = np.random.default_rng(7)
    g2 = np.random.default_rng(7)
    o1 = [b[1].tolist() for b in DataLoader(ds(20), 5, shuffle=True, generator=g1)]
    o2 = [b[1].tolist() for b in DataLoader(ds(20), 5, shuffle=True, generator=g2)]
    assert o1 == o2


def test_loader_state_dict_round_trip():
    g = np.random.default_rng(1)
    ld = DataLoader(ds(20), 5, shuffle=True, generator=g)
    st = ld.state_dict()
    first = [b[1].tolist() for b in ld]
    ld.load_state_dict(st)
    assert [b[1].tolist() for b in ld] == first


def test_non_indexable_dataset_is_collated():
    class Squares:
        def __len__(self):
            return 5

        def __getitem__(self, i):
            return np.array([i, i * i], dtype=np.float32), i
    (x, y), = list(DataLoader(Squares(), batch_size=5))
    assert x.shape == (5, 2) and x[3].tolist() == [3, 9] and y.tolist() == [0, 1, 2, 3, 4]


def test_random_split():
    a, b = random_split(ds(10), [7, 3], generator=np.random.default_rng(0))
    ia = [int(a[i][1]) for i in range(len(a))]
    ib = [int(b[i][1]) for i in range(len(b))]
    assert len(ia) == 7 and len(ib) == 3 and sorted(ia + ib) == list(range(10))
    c, d = random_split(ds(10), [0.5, 0.5], generator=np.random.default_rng(0))
    assert len(c) == len(d) == 5
    with pytest.raises(ValueError, match="sum to 9"):
        random_split(ds(10), [4, 5])


def test_load_digits_split_shapes_and_scale():
    xtr, ytr, xte, yte = load_digits()
    assert xtr.shape == (1437, 1, 8, 8) and xte.shape == (360, 1, 8, 8)
    assert xtr.dtype == np.float32 and ytr.dtype == np.int64
    assert 0.0 <= xtr.min() and xtr.max() == 1.0
    assert set(np.unique(ytr)) == set(range(10))
    again = load_digits()
    assert np.array_equal(again[3], yte)            # fixed, seeded split
    assert load_digits(layout="flat")[0].shape == (1437, 64)
    assert load_digits(layout="sequence")[2].shape == (360, 8, 8)
    with pytest.raises(ValueError, match="layout"):
        load_digits(layout="video")


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.int32, np.float32, np.float64])
@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_idx_round_trip(tmp_path, dtype, suffix):
    a = (np.arange(24).reshape(2, 3, 4) * 3).astype(dtype)
    p = write_idx(tmp_path / ("a.idx" + suffix), a)
    b = read_idx(p)
    assert b.dtype == np.dtype(dtype) and np.array_equal(a, b)


def test_idx_header_bytes(tmp_path):
    p = write_idx(tmp_path / "l.idx", np.array([7, 2, 1], dtype=np.uint8))
    assert p.read_bytes() == bytes([0, 0, 8, 1, 0, 0, 0, 3, 7, 2, 1])


def test_idx_corrupt_files_give_clear_errors(tmp_path):
    good = write_idx(tmp_path / "g.idx", np.zeros((4, 5, 5), np.uint8)).read_bytes()
    cases = {
        "short.idx": (good[:3], "truncated IDX header"),
        "dims.idx": (good[:9], "truncated IDX header"),
        "data.idx": (good[:-7], "truncated IDX data"),
        "extra.idx": (good + b"xx", "unexpected bytes"),
        "magic.idx": (b"PK\x03\x04" + good[4:], "not an IDX file"),
        "gz.idx.gz": (gzip.compress(good)[:-10], "corrupt or truncated gzip"),
    }
    for name, (data, msg) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(IDXError, match=msg):
            read_idx(tmp_path / name)
    with pytest.raises(IDXError, match="no such file"):
        read_idx(tmp_path / "missing.idx")


def _write_set(root, n=6):
    rng = np.random.default_rng(0)
    write_idx(root / "train-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
    write_idx(root / "train-labels-idx1-ubyte.gz", (np.arange(n) % 10).astype(np.uint8))
    write_idx(root / "t10k-images-idx3-ubyte", np.full((2, 28, 28), 255, np.uint8))
    write_idx(root / "t10k-labels-idx1-ubyte", np.array([3, 4], np.uint8))


def test_mnist_from_local_folder(tmp_path):
    _write_set(tmp_path)
    x, y = load_mnist(tmp_path)
    assert x.shape == (6, 1, 28, 28) and x.dtype == np.float32 and y.dtype == np.int64
    assert 0 <= x.min() and x.max() <= 1 and y.tolist() == [0, 1, 2, 3, 4, 5]
    xt, yt = load_fashion_mnist(tmp_path, train=False)
    assert xt.shape == (2, 1, 28, 28) and np.all(xt == 1.0) and yt.tolist() == [3, 4]
    sub = tmp_path / "nested"
    (sub / "mnist").mkdir(parents=True)
    _write_set(sub / "mnist")
    assert load_mnist(sub)[0].shape == (6, 1, 28, 28)


def test_mnist_bad_folders(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_mnist(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte"):
        load_mnist(tmp_path)
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((3, 28, 28), np.uint8))
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(4, np.uint8))
    with pytest.raises(IDXError, match="shape"):
        load_mnist(tmp_path)


def test_generated_sets():
    g = np.random.default_rng(0)
    x, y = make_spirals(300, 3, generator=g)
    assert x.shape == (300, 2) and x.dtype == np.float32 and np.bincount(y).tolist() == [100] * 3
    assert np.abs(x).max() <= 1.0 + 1e-6
    x, y = make_moons(101, generator=g)
    assert x.shape == (101, 2) and np.bincount(y).tolist() == [51, 50]
    x, y = make_ring(2000, generator=g)
    assert y.max() == 7 and np.allclose(np.linalg.norm(x, axis=1), 2.0, atol=0.15)
    x, y = make_grid(2000, generator=g)
    assert y.max() == 24
    centers = np.array([[i, j] for i in (-4, -2, 0, 2, 4) for j in (-4, -2, 0, 2, 4)])
    assert np.abs(x - centers[y]).max() < 0.4
    refdl.manual_seed(5)
    a = make_spirals(30)
    refdl.manual_seed(5)
    assert np.array_equal(a[0], make_spirals(30)[0])


def test_transforms():
    x = np.arange(2 * 1 * 4 * 4, dtype=np.float32).reshape(2, 1, 4, 4)
    n = Normalize(2.0, 4.0)(x)
    assert np.allclose(n, (x - 2) / 4) and n.dtype == np.float32
    with pytest.raises(ValueError, match="channels"):
        Normalize([0, 0, 0], [1, 1, 1])(x)
    assert np.array_equal(RandomHorizontalFlip(1.0)(x), x[..., ::-1])
    assert np.array_equal(RandomHorizontalFlip(0.0)(x), x)
    c = RandomCrop(4, padding=1)(x, generator=np.random.default_rng(0))
    assert c.shape == x.shape
    # every crop is a shifted copy of the zero-padded image
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    for i in range(2):
        assert any(np.array_equal(c[i], padded[i, :, t:t + 4, s:s + 4])
                   for t in range(3) for s in range(3))
    assert RandomCrop(4)(x[0]).shape == (1, 4, 4)
    t = Compose([RandomCrop(4, 1), RandomHorizontalFlip(), Normalize(0.5, 0.5)])
    ld = DataLoader(TensorDataset(x, np.arange(2)), batch_size=2, transform=t,
                    generator=np.random.default_rng(0))
    (xb, yb), = list(ld)
    assert xb.shape == x.shape and yb.tolist() == [0, 1]
    with pytest.raises(ValueError, match="expected an image"):
        RandomHorizontalFlip()(np.zeros(3))

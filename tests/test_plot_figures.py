"""Figures usable inline (a Figure back when no path is given), the misclassified images,
decision boundaries, colorbars; progress bars in a terminal and in a pipe."""
import io

import numpy as np
import pytest
from matplotlib.figure import Figure

from refdl import plot
from refdl.progress import progress


def _titles(fig):
    return [ax.get_title() for ax in fig.axes if ax.get_title()]


def test_every_plot_returns_a_figure_without_a_path_and_the_path_with_one(tmp_path):
    rng = np.random.default_rng(0)
    hist = {"loss": [1.0, 0.5], "val_loss": [1.1, 0.6], "accuracy": [0.5, 0.8],
            "val_accuracy": [0.4, 0.7]}
    calls = {
        "history": lambda p: plot.plot_history(hist, p),
        "confusion": lambda p: plot.plot_confusion_matrix(np.eye(3, dtype=int) * 4, p),
        "filters": lambda p: plot.plot_filters(rng.standard_normal((4, 1, 3, 3)), p),
        "maps": lambda p: plot.plot_feature_maps(rng.random((1, 4, 5, 5)), p),
        "samples": lambda p: plot.plot_samples(rng.random((4, 1, 8, 8)), p, labels=[0, 1, 2, 3]),
        "heat": lambda p: plot.plot_heatmaps(rng.random((2, 1, 8, 8)), rng.random((2, 4, 4)), p),
        "norms": lambda p: plot.plot_grad_norms([("w", 1.0), ("b", 0.1)], p),
    }
    for name, call in calls.items():
        fig = call(None)
        assert isinstance(fig, Figure), name
        out = call(tmp_path / f"{name}.png")
        assert out == tmp_path / f"{name}.png" and out.stat().st_size > 1000, name


def test_misclassified_shows_exactly_the_wrong_ones_in_order():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 10, 200)
    p = y.copy()
    wrong = [3, 57, 58, 120, 199]
    for i in wrong:
        p[i] = (y[i] + 1 + i % 8) % 10
    fig = plot.plot_misclassified(rng.random((200, 8, 8)), y, p)
    titles = _titles(fig)
    assert titles == [f"p={p[i]} (t={y[i]}) !" for i in wrong]
    assert "5 of 200" in fig._suptitle.get_text()
    with pytest.raises(ValueError, match="every prediction is right"):
        plot.plot_misclassified(rng.random((3, 8, 8)), [1, 2, 3], [1, 2, 3])


def test_decision_boundary_counts_the_wrong_points_and_draws_the_regions():
    rng = np.random.default_rng(2)
    x = rng.uniform(-1, 1, (300, 2)).astype(np.float32)
    y = (x[:, 0] + 0.1 * rng.standard_normal(300) > 0).astype(int)

    def model(pts):                      # predicts class 1 right of x1 = 0
        return np.stack([-pts[:, 0], pts[:, 0]], axis=1)
    fig = plot.plot_decision_boundary(model, x, y)
    n_wrong = int(np.sum((x[:, 0] > 0).astype(int) != y))
    title = fig.axes[0].get_title()
    assert f"{100 * (1 - n_wrong / 300):.1f}% right" in title
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert f"wrong ({n_wrong})" in labels
    # the boundary drawn between the regions is the line x1 = 0
    seg = np.concatenate([p.vertices for c in fig.axes[0].collections
                          if hasattr(c, "get_paths") for p in c.get_paths()
                          if len(p.vertices) and np.ptp(p.vertices[:, 1]) > 1.5
                          and np.ptp(p.vertices[:, 0]) < 0.1])
    assert np.abs(seg[:, 0]).max() < 0.02
    with pytest.raises(ValueError, match=r"expected 2-D points of shape \(N, 2\)"):
        plot.plot_decision_boundary(model, np.zeros((3, 3)), [0, 1, 0])


def test_filters_and_feature_maps_share_one_scale_with_a_colorbar():
    rng = np.random.default_rng(3)
    w = rng.standard_normal((6, 1, 5, 5))
    fig = plot.plot_filters(w)
    cbar = [ax for ax in fig.axes if hasattr(ax, "_colorbar")]
    assert len(cbar) == 1
    v = np.abs(w).max()
    assert np.allclose(cbar[0].get_ylim(), (-v, v))
    maps = rng.random((3, 4, 4)) * 5 + 2
    fig = plot.plot_feature_maps(maps)
    cbar = [ax for ax in fig.axes if hasattr(ax, "_colorbar")]
    assert len(cbar) == 1 and np.allclose(cbar[0].get_ylim(), (maps.min(), maps.max()))
    for ax in fig.axes:
        for im in ax.get_images():
            assert np.allclose(im.get_clim(), (maps.min(), maps.max()))


class _Tty(io.StringIO):
    def isatty(self):
        return True


def test_progress_draws_on_a_terminal_and_stays_quiet_in_a_pipe():
    pytest.importorskip("tqdm")
    tty, pipe = _Tty(), io.StringIO()
    assert list(progress(range(5), desc="work", stream=tty)) == list(range(5))
    assert "\r" in tty.getvalue() and "5/5" in tty.getvalue()
    assert list(progress(range(5), desc="work", stream=pipe)) == list(range(5))
    assert "\r" not in pipe.getvalue()
    assert pipe.getvalue().startswith("work: 5/5 in ")          # one summary line
    silent = io.StringIO()
    list(progress(range(3), stream=silent, enabled=False))
    assert silent.getvalue() == ""


def test_fit_progress_in_a_pipe_prints_epoch_lines_only():
    import refdl
    from refdl import nn, optim
    from refdl.data import DataLoader, TensorDataset
    from refdl.train import fit
    refdl.manual_seed(0)
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((64, 4)).astype(np.float32), rng.integers(0, 2, 64)
    model = nn.Sequential(nn.Linear(4, 2))
    for stream, bar in ((io.StringIO(), False), (_Tty(), True)):
        fit(model, nn.CrossEntropyLoss(), optim.SGD(model.parameters(), lr=0.1),
            DataLoader(TensorDataset(x, y), 16), epochs=2, stream=stream)
        text = stream.getvalue()
        assert "epoch 1/2" in text and "epoch 2/2" in text
        assert ("\r" in text) == bar

"""Heat-map overlays (matplotlib's Agg canvas: no window, no global backend change)."""
import numpy as np

from .localization import normalize, upsample

__all__ = ["save_overlays"]


def save_overlays(path, images, maps, titles=None, boxes=None, ncols=None, alpha=0.5):
    """One panel per (image, map): the image in grey, the upsampled map in 'jet' over it,
    the object's box as a white rectangle, and a colorbar for the map (each map scaled to
    [0, 1]). images (N, C, H, W) or (N, H, W); maps (N, h, w) or a dict {method name:
    maps} for one row per method. Writes and returns ``path``; with ``path=None`` returns
    the Figure (shown inline in a notebook)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    images = np.asarray(images)
    if images.ndim == 4:
        images = images.mean(axis=1)
    rows = maps if isinstance(maps, dict) else {"": maps}
    n = images.shape[0]
    ncols = ncols or n
    fig = Figure(figsize=(1.6 * ncols + 0.8, 1.7 * len(rows)), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(rows), ncols, squeeze=False)
    mappable = None
    for r, (name, m) in enumerate(rows.items()):
        up = normalize(upsample(m, images.shape[-2:]))
        for i in range(ncols):
            ax = axes[r, i]
            ax.axis("off")
            if i >= n:
                continue
            ax.imshow(images[i], cmap="gray")
            mappable = ax.imshow(up[i], cmap="jet", alpha=alpha, vmin=0, vmax=1)
            if boxes is not None:
                x0, y0, x1, y1 = boxes[i]
                ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False,
                                       edgecolor="white", linewidth=1))
            if i == 0 and name:
                ax.set_title(name, fontsize=8, loc="left")
            elif titles is not None and r == 0:
                ax.set_title(titles[i], fontsize=7)
    fig.tight_layout(rect=(0, 0, 1 - 0.7 / (1.6 * ncols + 0.8), 1))
    if mappable is not None:
        cax = fig.add_axes((1 - 0.55 / (1.6 * ncols + 0.8), 0.15, 0.15 / (1.6 * ncols + 0.8),
                            0.7))
        fig.colorbar(mappable, cax=cax, label="map (scaled to [0, 1])")
    if path is None:
        return fig
    fig.savefig(path, dpi=100)
    return path

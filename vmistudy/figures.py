"""The thesis' figures of a trained VAE, written as PNG files.

Each function writes one PNG and returns its path, so that a tracking adapter can log it as an
artifact; `thesis_figures` makes every one that applies to a model. Codes are deterministic: the
posterior mean of z and the argmax one-hot of c, decoded to the decoder mean sigmoid(logits).
Traversals move z in units of its own spread: around the mean of the aggregate posterior q(z) over the test
split, in steps of its standard deviation, so that a model that shrank or stretched z (which the decoder can
undo) is shown over the same share of its code as any other.
Every function runs the model in eval mode (BatchNorm on its running statistics, so a single image
works) without autograd, and restores the modules' modes afterwards.
Image grids are torchvision's make_grid (padding 2); plots use matplotlib's Agg canvas without pyplot, so no
global backend or figure registry is touched. Both are imported only when a figure is made.
"""
from __future__ import annotations

import functools
import math
from pathlib import Path

import torch
import torch.nn.functional as F

from . import data as datasets
from .config import MISpec
from .networks import VAE, inference, mean_image

STATS_BATCH = 1000  # images encoded at once for the histogram and the heatmap


def _inferring(figure):
    @functools.wraps(figure)
    def wrapper(vae, *args, **kwargs):
        with inference(vae):
            return figure(vae, *args, **kwargs)
    return wrapper


def code(vae: VAE, x: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The deterministic code of x: the posterior mean of z and the one-hot argmax of q(c|x)."""
    posterior = vae.encode(x)
    z = posterior.gaussian.mean if posterior.gaussian is not None else None
    c = (F.one_hot(posterior.categorical.probs.argmax(-1), vae.k).to(x.dtype)
         if posterior.categorical is not None else None)
    return z, c


Units = tuple[torch.Tensor, torch.Tensor]  # per Gaussian dim: the centre and the step of a traversal


@_inferring
def aggregate_units(vae: VAE, images: torch.Tensor) -> Units:
    """Mean and standard deviation of the aggregate posterior q(z) over `images`, per dim:
    var = Var_x(mean(z|x)) + E_x var(z|x)."""
    _need(vae.d, "aggregate_units", "Gaussian")
    posteriors = [vae.encode(_as_input(vae, batch)).gaussian for batch in images.split(STATS_BATCH)]
    means = torch.cat([p.mean for p in posteriors])
    variances = torch.cat([p.log_var.exp() for p in posteriors])
    return means.mean(0), (means.var(0, correction=0) + variances.mean(0)).sqrt()


def _steps(vae: VAE, units: Units | None, span: float, steps: int) -> torch.Tensor:
    """[steps, d]: column i runs over centre_i + [-span, span] sd_i (the prior's units, 0 and 1, without units)."""
    centre, sd = units if units is not None else (torch.zeros(vae.d), torch.ones(vae.d))
    values = torch.linspace(-span, span, steps)[:, None] * sd.cpu() + centre.cpu()
    return values.to(_device(vae))


@_inferring
def traversal_pair(vae: VAE, x: torch.Tensor, dims: tuple[int, int], path, steps: int = 7,
                   span: float = 3.0, units: Units | None = None) -> Path:
    """Fig. 4.3: z[dims[0]] down the rows, z[dims[1]] across the columns, over [-span, span] in `units`."""
    first, second = dims
    if not (0 <= first < vae.d and 0 <= second < vae.d and first != second):
        raise ValueError(f"traversal_pair: dims must be two distinct Gaussian dims in 0..{vae.d - 1}, got {dims}")
    z, c = code(vae, _one_image(vae, x))
    values = _steps(vae, units, span, steps)
    z = z.repeat(steps * steps, 1)
    z[:, first] = values[:, first].repeat_interleave(steps)  # make_grid fills row by row
    z[:, second] = values[:, second].repeat(steps)
    return _save_grid(_decode(vae, z, c), path, nrow=steps)


@_inferring
def traversal_rows(vae: VAE, x: torch.Tensor, path, steps: int = 11, span: float = 5.0,
                   units: Units | None = None) -> Path:
    """Fig. 4.4 style: row i varies z[i] over [-span, span] in `units`, the other dims stay at x's code."""
    _need(vae.d, "traversal_rows", "Gaussian")
    z, c = code(vae, _one_image(vae, x))
    values = _steps(vae, units, span, steps)
    z = z.repeat(vae.d * steps, 1)
    cells = torch.arange(vae.d * steps, device=z.device)
    z[cells, cells // steps] = values.T.flatten()
    return _save_grid(_decode(vae, z, c), path, nrow=steps)


@_inferring
def categorical_swaps(vae: VAE, images: torch.Tensor, path) -> Path:
    """Figs. 4.5/4.6: per image, the original, then its z decoded with each of the K categories."""
    _need(vae.k, "categorical_swaps", "categorical")
    x = _as_input(vae, images)
    n, k = len(x), vae.k
    z, _ = code(vae, x)
    z = z.repeat_interleave(k, 0) if z is not None else None
    swapped = _decode(vae, z, torch.eye(k, device=x.device).repeat(n, 1)).view(n, k, *x.shape[1:])
    return _save_grid(torch.cat([x.unsqueeze(1), swapped], 1).flatten(0, 1), path, nrow=k + 1)


@_inferring
def probability_histogram(vae: VAE, images: torch.Tensor, path) -> Path:
    """Fig. 4.7: all entries of q(c|x); a confident encoder piles them up at 0 and 1."""
    _need(vae.k, "probability_histogram", "categorical")
    probs = _probs(vae, images)
    fig, ax = _figure((5, 3.5))
    ax.hist(probs.flatten().cpu().numpy(), bins=20, range=(0, 1))
    ax.set_xlim(0, 1)
    ax.set_xlabel("q(c = k | x)")
    ax.set_ylabel("count")
    ax.set_title(f"{len(probs)} images x {vae.k} categories")
    return _save_figure(fig, path)


@_inferring
def contingency_heatmap(vae: VAE, images: torch.Tensor, labels: torch.Tensor, path) -> Path:
    """Figs. 4.10/4.11: counts of (true class, argmax category); a clean clustering is a permutation."""
    _need(vae.k, "contingency_heatmap", "categorical")
    predicted = _probs(vae, images).argmax(-1).cpu()
    labels = labels.cpu().long()
    classes = int(labels.max()) + 1
    counts = torch.bincount(labels * vae.k + predicted, minlength=classes * vae.k).view(classes, vae.k)
    fig, ax = _figure((0.5 * vae.k + 2.5, 0.45 * classes + 1.5))
    heat = ax.imshow(counts.numpy(), cmap="Blues")
    dark = counts.max().item() / 2  # white text on the dark cells
    for row, cells in enumerate(counts.tolist()):
        for col, count in enumerate(cells):
            ax.text(col, row, count, ha="center", va="center", fontsize=7, color="white" if count > dark else "black")
    ax.set_xticks(range(vae.k))
    ax.set_yticks(range(classes))
    ax.set_xlabel("category (argmax q(c|x))")
    ax.set_ylabel("true class")
    fig.colorbar(heat, ax=ax, label="images")
    return _save_figure(fig, path)


@_inferring
def reconstructions(vae: VAE, images: torch.Tensor, path) -> Path:
    """Originals in the top row, their reconstructions from the deterministic code below."""
    x = _as_input(vae, images)
    return _save_grid(torch.cat([x, _decode(vae, *code(vae, x))]), path, nrow=len(x))


@_inferring
def prior_samples(vae: VAE, path, n: int = 64, generator: torch.Generator | None = None) -> Path:
    """Decoded draws from the prior: c ~ Uniform(K) one-hot, z ~ p(z|c)."""
    where = generator.device if generator is not None else torch.device("cpu")
    c = (F.one_hot(torch.randint(vae.k, (n,), generator=generator, device=where), vae.k).float().to(_device(vae))
         if vae.k else None)
    z = vae.sample_prior_z(c, n, generator) if vae.d else None
    return _save_grid(_decode(vae, z, c), path, nrow=math.ceil(math.sqrt(n)))


def thesis_figures(vae: VAE, mi: MISpec, data: datasets.ImageData, folder, *, n: int = 8) -> dict[str, Path]:
    """Every figure that applies to the model, as {name: folder/name.png}; deterministic for given weights.

    Image grids show the first n test images (traversals the first one); the histogram and the heatmap
    are statistics, so they cover the whole test split, as in the thesis.
    """
    folder = Path(folder)
    first = data.test_images[:n]
    figures = {}
    with inference(vae):
        figures["reconstructions"] = reconstructions(vae, first, folder / "reconstructions.png")
        figures["prior_samples"] = prior_samples(vae, folder / "prior_samples.png",
                                                 generator=torch.Generator().manual_seed(0))
        units = aggregate_units(vae, data.test_images) if vae.d else None
        if vae.d >= 1:
            figures["traversal_rows"] = traversal_rows(vae, first[:1], folder / "traversal_rows.png", units=units)
        if vae.d >= 2:
            # the MI-target dims are the ones the regularizer should have made interpretable
            dims = tuple(mi.gaussian[:2]) if len(mi.gaussian) >= 2 else (0, 1)
            figures["traversal_pair"] = traversal_pair(vae, first[:1], dims, folder / "traversal_pair.png",
                                                       units=units)
        if vae.k:
            figures["categorical_swaps"] = categorical_swaps(vae, first, folder / "categorical_swaps.png")
            figures["probability_histogram"] = probability_histogram(
                vae, data.test_images, folder / "probability_histogram.png")
            figures["contingency_heatmap"] = contingency_heatmap(
                vae, data.test_images, data.test_labels, folder / "contingency_heatmap.png")
    return figures


def _need(size: int, figure: str, part: str) -> None:
    if not size:
        raise ValueError(f"{figure}: the model has no {part} latent part")


def _device(vae: VAE) -> torch.device:
    return next(vae.parameters()).device


def _as_input(vae: VAE, images: torch.Tensor) -> torch.Tensor:
    """uint8 0..255 (as ImageData holds them) or float 0..1 images -> float on the model's device."""
    images = images.to(_device(vae))
    return datasets.as_float(images) if images.dtype == torch.uint8 else images.float()


def _one_image(vae: VAE, x: torch.Tensor) -> torch.Tensor:
    if x.dim() != 4 or len(x) != 1:
        raise ValueError(f"a traversal starts from one image [1, C, H, W], got shape {list(x.shape)}")
    return _as_input(vae, x)


def _decode(vae: VAE, z: torch.Tensor | None, c: torch.Tensor | None) -> torch.Tensor:
    """The decoder mean; a single code c (or z) is broadcast to the batch of the other."""
    n = max(len(t) for t in (z, c) if t is not None)
    z, c = (t.expand(n, -1) if t is not None else None for t in (z, c))
    return mean_image(vae.decode(z, c))


def _probs(vae: VAE, images: torch.Tensor) -> torch.Tensor:
    """q(c|x) [N, K], encoded in batches so that a whole test split fits in memory."""
    return torch.cat([vae.encode(_as_input(vae, batch)).categorical.probs for batch in images.split(STATS_BATCH)])


def _save_grid(images: torch.Tensor, path, nrow: int) -> Path:
    path = _prepared(path)
    from torchvision.utils import save_image  # here: importing torchvision costs 1.6 s, a figure is rarely made

    save_image(images.float().cpu(), path, nrow=nrow)
    return path


def _figure(size: tuple[float, float]):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def _save_figure(fig, path) -> Path:
    path = _prepared(path)
    fig.savefig(path, dpi=120)
    return path


def _prepared(path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path

"""Figures: valid PNGs of the right grid sizes, the applicable set per model, modes restored, traversals vary."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.utils import make_grid

from benchmarks.rescaling import rescale_z_hat
from vmistudy import config, figures
from vmistudy import data as datasets
from vmistudy.trainer import Trainer, build_vae

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
GRIDS = {"reconstructions", "prior_samples", "traversal_rows", "traversal_pair", "categorical_swaps"}
GAUSSIAN = {"reconstructions", "prior_samples", "traversal_rows", "traversal_pair"}
CATEGORICAL = {"reconstructions", "prior_samples", "categorical_swaps", "probability_histogram",
               "contingency_heatmap"}


def spec(backbone="mlp", gaussian_dims=4, categories=4, mi=None):
    return config.validate({
        "data": {"name": "synthetic", "classes": 4, "train_size": 200, "test_size": 60},
        "model": {"backbone": backbone, "hidden": 32, "gaussian_dims": gaussian_dims, "categories": categories},
        "train": {"epochs": 1, "batch_size": 50, "seed": 0},
        "mi": mi or {"lambda_mi": 1.0, "categorical": True, "gaussian": [0, 1]},
    }, source="test")


JOINT = spec()
GAUSSIAN_ONLY = spec(categories=None, mi={"categorical": False, "gaussian": [2, 3]})
CATEGORICAL_ONLY = spec(gaussian_dims=0, mi={"categorical": True})


@pytest.fixture(scope="module")
def data():
    return datasets.load(JOINT.data)


def vae_of(s, data):
    return build_vae(s, data.image_shape)


def read_png(path) -> np.ndarray:
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG"
        return np.asarray(image.convert("L"))


def grid_shape(n: int, nrow: int, shape) -> tuple[int, int]:
    """(height, width) of make_grid's output for n images of `shape`, nrow per row."""
    return tuple(make_grid(torch.zeros(n, *shape), nrow=nrow).shape[1:])


def cell(grid: np.ndarray, row: int, col: int, shape) -> np.ndarray:
    """The image at (row, col) of a make_grid with the default padding of 2."""
    _, h, w = shape
    top, left = 2 + row * (h + 2), 2 + col * (w + 2)
    return grid[top:top + h, left:left + w]


def test_joint_model_gets_every_figure_as_a_png_of_the_right_size(data, tmp_path):
    vae = vae_of(JOINT, data)
    paths = figures.thesis_figures(vae, JOINT.mi, data, tmp_path / "figs", n=8)
    assert set(paths) == GAUSSIAN | CATEGORICAL
    assert all(path == tmp_path / "figs" / f"{name}.png" for name, path in paths.items())
    images = {name: read_png(path) for name, path in paths.items()}
    shape, d, k = data.image_shape, JOINT.model.gaussian_dims, JOINT.model.categories
    expected = {"reconstructions": grid_shape(2 * 8, 8, shape), "prior_samples": grid_shape(64, 8, shape),
                "traversal_rows": grid_shape(d * 11, 11, shape), "traversal_pair": grid_shape(7 * 7, 7, shape),
                "categorical_swaps": grid_shape(8 * (k + 1), k + 1, shape)}
    assert expected["traversal_pair"] == (7 * (shape[1] + 2) + 2, 7 * (shape[2] + 2) + 2)
    assert {name: images[name].shape for name in GRIDS} == expected
    for plot in ("probability_histogram", "contingency_heatmap"):
        assert min(images[plot].shape) > 100 and images[plot].std() > 0  # a drawn plot, not a blank canvas


@pytest.mark.parametrize("s, expected", [
    (GAUSSIAN_ONLY, GAUSSIAN),
    (CATEGORICAL_ONLY, CATEGORICAL),
    (spec(gaussian_dims=1, categories=None, mi={"categorical": False, "gaussian": [0]}),
     GAUSSIAN - {"traversal_pair"}),
], ids=["gaussian-only", "categorical-only", "one-gaussian-dim"])
def test_only_the_applicable_figures(s, expected, data, tmp_path):
    paths = figures.thesis_figures(vae_of(s, data), s.mi, data, tmp_path)
    assert set(paths) == expected
    for path in paths.values():
        read_png(path)


@pytest.mark.slow
def test_conv_backbone_after_an_epoch_in_train_mode(data, tmp_path):
    s = spec(backbone="conv")
    small = datasets.ImageData(data.train_images[:50], data.train_labels[:50],
                               data.test_images[:20], data.test_labels[:20])
    trainer = Trainer(s.recipe, small)  # one step of 50: BatchNorm's running statistics have moved
    trainer.train_epoch()
    vae = trainer.vae
    vae.train()
    before = {name: m.training for name, m in vae.named_modules()}
    paths = figures.thesis_figures(vae, s.mi, small, tmp_path, n=3)
    assert set(paths) == GAUSSIAN | CATEGORICAL
    assert {name: m.training for name, m in vae.named_modules()} == before
    assert read_png(paths["reconstructions"]).shape == grid_shape(6, 3, small.image_shape)


def test_eval_mode_and_mixed_modes_are_restored_too(data, tmp_path):
    vae = vae_of(JOINT, data)
    vae.eval()
    vae.decoder.train()
    figures.thesis_figures(vae, JOINT.mi, data, tmp_path)
    assert not vae.training and not vae.body.training and vae.decoder.training


def test_traversals_follow_the_mi_dims_and_vary_the_image(data, tmp_path, monkeypatch):
    vae = vae_of(GAUSSIAN_ONLY, data)
    calls = []
    monkeypatch.setattr(figures, "traversal_pair", lambda *a, **kw: calls.append(a[2]) or tmp_path / "p.png")
    figures.thesis_figures(vae, GAUSSIAN_ONLY.mi, data, tmp_path)
    assert calls == [(2, 3)]
    monkeypatch.undo()

    shape, x = data.image_shape, data.test_images[:1]
    pair = read_png(figures.traversal_pair(vae, x, (2, 3), tmp_path / "pair.png", steps=5))
    down = [cell(pair, r, 0, shape) for r in range(5)]
    across = [cell(pair, 0, c, shape) for c in range(5)]
    assert any(not np.array_equal(down[0], other) for other in down[1:])
    assert any(not np.array_equal(across[0], other) for other in across[1:])
    rows = read_png(figures.traversal_rows(vae, x, tmp_path / "rows.png", steps=4))
    for dim in range(vae.d):
        line = [cell(rows, dim, c, shape) for c in range(4)]
        assert any(not np.array_equal(line[0], other) for other in line[1:]), f"z[{dim}] changes nothing"


def test_originals_are_shown_unchanged(data, tmp_path):
    vae, images, shape = vae_of(JOINT, data), data.test_images[:5], data.image_shape
    originals = [image[0].numpy() for image in images]
    recon = read_png(figures.reconstructions(vae, images, tmp_path / "r.png"))
    swaps = read_png(figures.categorical_swaps(vae, datasets.as_float(images), tmp_path / "s.png"))
    for i, original in enumerate(originals):
        assert np.array_equal(cell(recon, 0, i, shape), original)
        assert np.array_equal(cell(swaps, i, 0, shape), original)


def test_figures_that_need_a_missing_part_raise(data, tmp_path):
    gaussian, categorical = vae_of(GAUSSIAN_ONLY, data), vae_of(CATEGORICAL_ONLY, data)
    images, labels = data.test_images[:4], data.test_labels[:4]
    with pytest.raises(ValueError, match="no categorical latent part"):
        figures.categorical_swaps(gaussian, images, tmp_path / "s.png")
    with pytest.raises(ValueError, match="no categorical latent part"):
        figures.probability_histogram(gaussian, images, tmp_path / "h.png")
    with pytest.raises(ValueError, match="no categorical latent part"):
        figures.contingency_heatmap(gaussian, images, labels, tmp_path / "c.png")
    with pytest.raises(ValueError, match="no Gaussian latent part"):
        figures.traversal_rows(categorical, images[:1], tmp_path / "t.png")
    with pytest.raises(ValueError, match="two distinct Gaussian dims"):
        figures.traversal_pair(gaussian, images[:1], (1, 1), tmp_path / "t.png")
    with pytest.raises(ValueError, match="one image"):
        figures.traversal_pair(gaussian, images, (0, 1), tmp_path / "t.png")
    assert not list(tmp_path.iterdir())


def test_deterministic_for_a_given_model(data, tmp_path):
    vae = vae_of(JOINT, data)
    a = figures.thesis_figures(vae, JOINT.mi, data, tmp_path / "a")
    b = figures.thesis_figures(vae, JOINT.mi, data, tmp_path / "b")
    assert a.keys() == b.keys()
    assert all(a[name].read_bytes() == b[name].read_bytes() for name in a)


def test_prior_samples_follow_the_generator(data, tmp_path):
    vae = vae_of(JOINT, data)

    def draw(seed, name):
        generator = torch.Generator().manual_seed(seed)
        return read_png(figures.prior_samples(vae, tmp_path / name, n=10, generator=generator))

    first = draw(1, "a.png")
    assert first.shape == grid_shape(10, math.ceil(math.sqrt(10)), data.image_shape)
    assert np.array_equal(first, draw(1, "b.png")) and not np.array_equal(first, draw(2, "c.png"))


def test_traversals_move_z_in_units_of_its_own_spread(data, tmp_path):
    """A model whose z^ was rescaled (the decoder undoing it) shows the same traversal; in the prior's units
    it would show ten times the range."""
    trainer = Trainer(spec(mi={"gaussian": [0, 2], "categorical": True}).recipe, data)
    trainer.train_epoch()
    scaled, _ = rescale_z_hat(trainer.vae, trainer.q, [0, 2], 0.1)
    x, grids, units = data.test_images[:1], {}, {}
    for name, vae in (("model", trainer.vae), ("rescaled", scaled)):
        units[name] = figures.aggregate_units(vae, data.test_images)
        grids[name] = read_png(figures.traversal_pair(vae, x, (0, 2), tmp_path / f"{name}.png", units=units[name]))
    assert torch.allclose(units["rescaled"][1][[0, 2]], 0.1 * units["model"][1][[0, 2]], rtol=1e-4)
    assert np.abs(grids["model"].astype(int) - grids["rescaled"]).max() <= 1
    prior_units = read_png(figures.traversal_pair(scaled, x, (0, 2), tmp_path / "prior.png"))
    assert np.abs(grids["rescaled"].astype(int) - prior_units).max() > 10

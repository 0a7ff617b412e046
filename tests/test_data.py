"""Data sets held in memory: torchvision MNIST/FashionMNIST, synthetic, image folders; epoch batching."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from vmistudy import config
from vmistudy import data as datasets


def _spec(**data) -> config.DataSpec:
    return config.validate({"data": data}).data


def _check_layout(images: datasets.ImageData, n_train: int, n_test: int, shape=(1, 28, 28)):
    assert images.train_images.shape == (n_train, *shape) and images.test_images.shape == (n_test, *shape)
    assert images.train_images.dtype == images.test_images.dtype == torch.uint8
    assert images.train_labels.shape == (n_train,) and images.test_labels.shape == (n_test,)
    assert images.train_labels.dtype == images.test_labels.dtype == torch.int64
    assert images.image_shape == shape


def test_mnist_loads_as_uint8_with_subsets(mnist_root):
    images = datasets.load(_spec(name="mnist", subset=500, test_subset=120))
    _check_layout(images, 500, 120)
    assert images.train_images.max() == 255 and images.train_images.min() == 0
    assert set(images.train_labels.unique().tolist()) == set(range(10))
    # the subset is the first N images of the full set
    full = datasets.load(_spec(name="mnist"))
    _check_layout(full, 60000, 10000)
    assert torch.equal(full.train_images[:500], images.train_images)
    assert torch.equal(full.test_labels[:120], images.test_labels)
    assert full.train_labels[:8].tolist() == [5, 0, 4, 1, 9, 2, 1, 3]  # MNIST's well-known first labels
    x = datasets.as_float(images.train_images[:10])
    assert x.dtype == torch.float32 and 0 <= x.min() and x.max() == 1.0
    assert torch.allclose(x * 255, images.train_images[:10].float())


def test_fashion_mnist_loads(fashion_root):
    images = datasets.load(_spec(name="fashion_mnist", subset=300, test_subset=50))
    _check_layout(images, 300, 50)
    mnist = datasets.load(_spec(name="mnist", subset=300, test_subset=50)) if (fashion_root / "MNIST").is_dir() else None
    if mnist is not None:
        assert not torch.equal(images.train_images, mnist.train_images)
    assert images.train_labels.max() <= 9 and len(images.train_labels.unique()) >= 8


def test_synthetic_is_deterministic_with_known_classes():
    spec = _spec(name="synthetic", classes=5, train_size=400, test_size=100)
    a, b = datasets.load(spec), datasets.load(spec)
    _check_layout(a, 400, 100)
    for name in ("train_images", "train_labels", "test_images", "test_labels"):
        assert torch.equal(getattr(a, name), getattr(b, name))
    assert set(a.train_labels.unique().tolist()) == set(range(5))
    assert set(a.train_images.unique().tolist()) <= {0, 255}
    # images of one class are close (5% flips of a shared prototype), of different classes far apart
    flat = (a.train_images.flatten(1) > 0).float()
    same, other = flat[a.train_labels == 0], flat[a.train_labels == 1]
    within = (same[0] != same[1:]).float().mean(1)
    between = (same[0] != other).float().mean(1)
    assert within.max() < 0.16 and between.min() > 0.25
    assert not torch.equal(a.train_images[:100], a.test_images)
    # subset applies to synthetic data too
    c = datasets.load(_spec(name="synthetic", classes=5, train_size=400, test_size=100, subset=50, test_subset=20))
    assert torch.equal(c.train_images, a.train_images[:50]) and torch.equal(c.test_labels, a.test_labels[:20])


def _write_pngs(folder, classes: dict[str, int], size=(10, 6), mode="RGB", start=0):
    from PIL import Image

    rng = np.random.default_rng(start)
    for name, count in classes.items():
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
            Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(folder / name / f"{i}.png")


def test_image_folder_with_train_and_test(tmp_path):
    _write_pngs(tmp_path / "train", {"cat": 3, "dog": 5})
    _write_pngs(tmp_path / "test", {"cat": 2, "dog": 1}, mode="L", start=1)
    images = datasets.load(_spec(name="image_folder", root=str(tmp_path), image_size=12))
    _check_layout(images, 8, 3, shape=(1, 12, 12))
    assert images.train_labels.tolist() == [0, 0, 0, 1, 1, 1, 1, 1]  # class folders in sorted order
    assert images.test_labels.tolist() == [0, 0, 1]


def test_image_folder_grayscale_and_resize_values(tmp_path):
    from PIL import Image

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    for i, colour in enumerate([(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)]):
        Image.new("RGB", (9, 5), colour).save(tmp_path / ("a" if i < 2 else "b") / f"{i}.png")
    for i in range(6):
        Image.new("RGB", (9, 5), (i * 40, i * 40, i * 40)).save(tmp_path / "b" / f"g{i}.png")
    images = datasets.load(_spec(name="image_folder", root=str(tmp_path), image_size=8, test_fraction=0.2))
    total = 10
    n_test = round(0.2 * total)
    _check_layout(images, total - n_test, n_test, shape=(1, 8, 8))
    both = torch.cat([images.train_images, images.test_images])
    labels = torch.cat([images.train_labels, images.test_labels])
    assert sorted(labels.tolist()) == [0, 0] + [1] * 8
    # every image is one flat grey level; the ITU-R 601 luma of pure red/green/blue is 76/150/29
    levels = sorted(int(img.unique().item()) for img in both)
    assert all(len(img.unique()) == 1 for img in both)
    for expected in (76, 150, 29, 255, 0, 200):
        assert any(abs(level - expected) <= 1 for level in levels), (expected, levels)
    # the split is deterministic
    again = datasets.load(_spec(name="image_folder", root=str(tmp_path), image_size=8, test_fraction=0.2))
    assert torch.equal(again.test_images, images.test_images) and torch.equal(again.test_labels, images.test_labels)


def test_image_folder_without_split_uses_test_fraction(tmp_path):
    _write_pngs(tmp_path, {"x": 6, "y": 4, "z": 10}, size=(28, 28))
    images = datasets.load(_spec(name="image_folder", root=str(tmp_path), test_fraction=0.25))
    _check_layout(images, 15, 5)
    assert sorted(torch.cat([images.train_labels, images.test_labels]).tolist()) == [0] * 6 + [1] * 4 + [2] * 10
    # train and test are disjoint (random pixels make every image unique)
    train = {bytes(t.numpy()) for t in images.train_images}
    assert not any(bytes(t.numpy()) in train for t in images.test_images)


def test_image_folder_with_no_images_fails(tmp_path):
    (tmp_path / "empty_class").mkdir()
    with pytest.raises((ValueError, FileNotFoundError)):
        datasets.load(_spec(name="image_folder", root=str(tmp_path)))


@pytest.mark.parametrize("n, batch", [(10, 3), (64, 64), (100, 7), (5, 128)])
def test_batch_indices_cover_each_index_once(n, batch):
    g = torch.Generator().manual_seed(0)
    for _ in range(3):  # three epochs
        batches = list(datasets.batch_indices(n, batch, g))
        assert len(batches) == -(-n // batch)
        assert all(len(b) == batch for b in batches[:-1]) and 1 <= len(batches[-1]) <= batch
        assert sorted(torch.cat(batches).tolist()) == list(range(n))


def test_batch_indices_follow_the_generator():
    def epoch(seed, epochs=1):
        g = torch.Generator().manual_seed(seed)
        return [torch.cat(list(datasets.batch_indices(1000, 100, g))) for _ in range(epochs)]

    assert torch.equal(epoch(1)[0], epoch(1)[0])
    assert not torch.equal(epoch(1)[0], epoch(2)[0])
    first, second = epoch(1, epochs=2)
    assert not torch.equal(first, second)  # each epoch reshuffles
    assert not torch.equal(first, torch.arange(1000))


def test_image_data_to_device_keeps_everything():
    images = datasets.load(_spec(name="synthetic", train_size=20, test_size=10))
    moved = images.to(torch.device("cpu"))
    assert torch.equal(moved.train_images, images.train_images) and torch.equal(moved.test_labels, images.test_labels)


def _centre_of_mass(images: torch.Tensor) -> torch.Tensor:
    """[n, 2] (row, column) in pixels of each [1, H, W] image."""
    h, w = images.shape[-2:]
    rows, cols = torch.meshgrid(torch.arange(h, dtype=images.dtype), torch.arange(w, dtype=images.dtype),
                                indexing="ij")
    mass = images.sum((1, 2, 3))
    return torch.stack([(images[:, 0] * rows).sum((1, 2)), (images[:, 0] * cols).sum((1, 2))], 1) / mass[:, None]


def _blobs(n: int, size: int = 28) -> torch.Tensor:
    x = torch.zeros(n, 1, size, size)
    x[:, :, 11:17, 11:17] = 1.0  # a 6x6 square around the centre (13.5, 13.5)
    return x


def test_random_affine_without_a_range_leaves_images_as_they_are():
    x = torch.rand(5, 1, 28, 28)
    assert torch.allclose(datasets.random_affine(x, 0, 0, 0, torch.Generator().manual_seed(0)), x, atol=1e-4)


def test_random_affine_shifts_within_its_range_and_each_image_its_own_way():
    moved = datasets.random_affine(_blobs(200), rotate=0, translate=0.2, scale=0,
                                   generator=torch.Generator().manual_seed(0))
    shift = _centre_of_mass(moved) - 13.5
    assert shift.abs().max() <= 0.2 * 28 + 0.5
    assert shift.abs().max() > 0.15 * 28  # the range is used, not just a corner of it
    assert len({tuple(s) for s in shift.round(decimals=2).tolist()}) == 200


def test_random_affine_rotates_and_zooms_about_the_centre():
    generator = torch.Generator().manual_seed(1)
    bars = torch.zeros(100, 1, 28, 28)
    bars[:, :, 13:15, 4:24] = 1.0  # a horizontal bar through the centre
    turned = datasets.random_affine(bars, rotate=90, translate=0, scale=0, generator=generator)
    assert (_centre_of_mass(turned) - 13.5).abs().max() < 0.5
    upright = turned[:, 0, :, 13:15].sum((1, 2)) / turned.sum((1, 2, 3))  # the share of mass in the middle columns
    assert upright.max() > 0.5 and upright.min() < 0.2  # some bars turned near vertical, some stayed near flat
    zoomed = datasets.random_affine(_blobs(100), rotate=0, translate=0, scale=0.3, generator=generator)
    area = zoomed.sum((1, 2, 3)) / 36
    assert 0.7 ** 2 - 0.05 <= area.min() < 0.9 and 1.1 < area.max() <= 1.3 ** 2 + 0.05


def test_random_affine_follows_the_generator():
    x = torch.rand(8, 1, 28, 28)
    draw = [datasets.random_affine(x, 15, 0.1, 0.1, torch.Generator().manual_seed(s)) for s in (3, 3, 4)]
    assert torch.equal(draw[0], draw[1]) and not torch.equal(draw[0], draw[2])

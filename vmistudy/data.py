"""Datasets held in memory as uint8 tensors, batched by indexing a seeded permutation.

A whole MNIST fits in 55 MB, so there is no per-sample DataLoader work: a batch is one
index into a tensor and one division by 255.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn.functional as F

from .config import DataSpec
from .errors import InputError


@dataclass
class ImageData:
    """Images as uint8 [N, C, H, W] in 0..255, labels as int64 [N] (class ids, used only for scoring)."""
    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.train_images.shape[1:])

    def to(self, device: torch.device) -> ImageData:
        return ImageData(*(t.to(device) for t in (self.train_images, self.train_labels,
                                                  self.test_images, self.test_labels)))


def load(spec: DataSpec) -> ImageData:
    """The data set the spec names; InputError (one line) for files that cannot be read as it."""
    loader = {"mnist": _torchvision, "fashion_mnist": _torchvision,
              "image_folder": _image_folder, "synthetic": _synthetic}[spec.name]
    try:
        data = loader(spec)
    except (OSError, RuntimeError, ValueError) as e:
        raise InputError(f"data: cannot load {spec.name}: {e}") from None
    return ImageData(data.train_images[:spec.subset], data.train_labels[:spec.subset],
                     data.test_images[:spec.test_subset], data.test_labels[:spec.test_subset])


def as_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 0..255 -> float 0..1 in torch's default float type (float32 unless set): the Bernoulli domain."""
    return images.to(torch.get_default_dtype()).div_(255)


def random_affine(x: torch.Tensor, rotate: float, translate: float, scale: float,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Each image of x [n, C, H, W] rotated by up to +-rotate degrees, zoomed by 1 +- scale and shifted by up to
    +-translate of its side, independently and uniformly, on `generator`; the outside reads as 0 (background)."""
    n = len(x)
    u = torch.rand(n, 4, generator=generator, device=x.device, dtype=x.dtype) * 2 - 1
    angle, zoom, shift = u[:, 0] * math.radians(rotate), 1 + u[:, 1] * scale, u[:, 2:] * (2 * translate)
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom  # the grid maps output to input: hence 1/zoom
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, align_corners=False, padding_mode="zeros")


def batch_indices(n: int, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """One epoch of shuffled minibatch indices; the last short batch is kept."""
    order = torch.randperm(n, generator=generator)
    yield from order.split(batch_size)


def _torchvision(spec: DataSpec) -> ImageData:
    from torchvision import datasets

    cls = {"mnist": datasets.MNIST, "fashion_mnist": datasets.FashionMNIST}[spec.name]
    root = str(spec.resolved_root())
    train, test = (cls(root, train=t, download=spec.download) for t in (True, False))
    return ImageData(train.data.unsqueeze(1), train.targets.long(), test.data.unsqueeze(1), test.targets.long())


def _image_folder(spec: DataSpec) -> ImageData:
    """`root/train` and `root/test` class folders if present, else one class-folder tree split by test_fraction."""
    root = spec.resolved_root()
    if (root / "train").is_dir() and (root / "test").is_dir():
        train, test = _read_folder(root / "train", spec.image_size), _read_folder(root / "test", spec.image_size)
        return ImageData(*train, *test)
    images, labels = _read_folder(root, spec.image_size)
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
    n_test = max(1, round(spec.test_fraction * len(images)))
    test, train = order[:n_test], order[n_test:]
    return ImageData(images[train], labels[train], images[test], labels[test])


def _read_folder(folder, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    from torchvision import datasets, transforms

    to_uint8 = transforms.Compose([transforms.Grayscale(), transforms.Resize((size, size)), transforms.PILToTensor()])
    dataset = datasets.ImageFolder(str(folder), transform=to_uint8)
    if len(dataset) == 0:
        raise ValueError(f"{folder}: no images found")
    images = torch.stack([image for image, _ in dataset])
    return images, torch.tensor(dataset.targets, dtype=torch.long)


def _synthetic(spec: DataSpec) -> ImageData:
    """K random binary prototypes on a 28x28 grid; each image is one with 5% of its pixels flipped.

    The classes are known and well separated, so a model that finds them scores near 100%.
    """
    g = torch.Generator().manual_seed(1234)
    prototypes = torch.rand(spec.classes, 1, 28, 28, generator=g) < 0.3

    def draw(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.randint(spec.classes, (n,), generator=g)
        flips = torch.rand(n, 1, 28, 28, generator=g) < 0.05
        return (prototypes[labels] ^ flips).to(torch.uint8) * 255, labels

    return ImageData(*draw(spec.train_size), *draw(spec.test_size))

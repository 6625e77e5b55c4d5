"""Datasets by name (`load_dataset`, `list_datasets`) and the batches the harness draws from them.

Small image sets (CIFAR-10 and its JPEG copy) are decoded once into uint8 tensors kept in the
user cache and normalised per batch; ImageNet streams from an ImageFolder with the standard
evaluation transforms. Calibration and gradient batches are a seeded sample of the train split;
evaluation uses the full test split.
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from reflow import paths
from reflow.errors import ReflowError
from reflow.registry import Registry
from reflow.tensor_cache import cached_tensors

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)

Batch = tuple[torch.Tensor, torch.Tensor]


class Split(Protocol):
    """One split of a dataset that yields normalised float batches for given indices."""

    def __len__(self) -> int: ...

    def batches(self, indices: torch.Tensor, batch_size: int) -> Iterator[Batch]: ...


@dataclass
class TensorSplit:
    """Decoded uint8 images in memory (N, C, H, W), normalised batch by batch."""

    images: torch.Tensor
    labels: torch.Tensor
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD

    def __len__(self) -> int:
        return len(self.labels)

    def batches(self, indices: torch.Tensor, batch_size: int) -> Iterator[Batch]:
        mean = torch.tensor(self.mean).view(1, -1, 1, 1)
        std = torch.tensor(self.std).view(1, -1, 1, 1)
        for chunk in indices.split(batch_size):
            x = self.images[chunk]
            if x.dtype == torch.uint8:
                x = x.float().div_(255.0)
            yield (x - mean) / std, self.labels[chunk]


@dataclass
class FolderSplit:
    """An ImageFolder decoded on the fly by DataLoader workers (for ImageNet-sized data)."""

    folder: torch.utils.data.Dataset
    workers: int = min(8, os.cpu_count() or 1)

    def __len__(self) -> int:
        return len(self.folder)

    def batches(self, indices: torch.Tensor, batch_size: int) -> Iterator[Batch]:
        subset = torch.utils.data.Subset(self.folder, indices.tolist())
        loader = torch.utils.data.DataLoader(
            subset, batch_size=batch_size, num_workers=self.workers
        )
        yield from loader


@dataclass
class ImageData:
    name: str
    train: Split
    test: Split
    num_classes: int
    root: Path | None

    @functools.cached_property
    def _test_order(self) -> torch.Tensor:
        return torch.randperm(len(self.test), generator=torch.Generator().manual_seed(0))

    def test_order(self) -> torch.Tensor:
        """The fixed shuffled order the test split is evaluated in, so any prefix mixes the
        classes (its identity is stored with each row's per-example outcomes); drawn once per
        dataset, not once per evaluated row."""
        return self._test_order

    def test_batches(self, batch_size: int = 500) -> Iterator[Batch]:
        """The whole test split in `test_order`."""
        return self.test.batches(self.test_order(), batch_size)

    def train_sample(self, n_batches: int, batch_size: int, seed: int, stream: str) -> list[Batch]:
        """``n_batches`` batches drawn without replacement from the train split.

        ``stream`` names the use (``"calibration"``, ``"gradients"``) so that different uses with
        the same seed draw different, independent samples.
        """
        need = n_batches * batch_size
        if need > len(self.train):
            raise ReflowError(
                f"{n_batches} batches of {batch_size} need {need} train images but {self.name} "
                f"has {len(self.train)}; ask for fewer batches or a smaller batch size"
            )
        generator = torch.Generator().manual_seed(stream_seed(seed, stream))
        order = torch.randperm(len(self.train), generator=generator)[:need]
        return list(self.train.batches(order, batch_size))


def augment(batches: list[Batch], seed: int, padding: int = 4) -> list[Batch]:
    """The CIFAR training recipe's augmentation (random crop after zero padding, random
    horizontal flip), seeded. Padding is applied to the normalised images with the value a black
    pixel normalises to, as ``transforms.RandomCrop(32, padding=4)`` pads before normalising."""
    generator = torch.Generator().manual_seed(stream_seed(seed, "augment"))
    black = (-torch.tensor(IMAGENET_MEAN) / torch.tensor(IMAGENET_STD)).view(1, 3, 1, 1)
    out = []
    for x, y in batches:
        n, _, h, w = x.shape
        canvas = black.expand(n, 3, h + 2 * padding, w + 2 * padding).clone()
        canvas[:, :, padding : padding + h, padding : padding + w] = x
        dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
        dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
        flip = torch.rand(n, generator=generator) < 0.5
        crops = torch.stack([canvas[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(n)])
        crops[flip] = crops[flip].flip(-1)
        out.append((crops, y))
    return out


def stream_seed(seed: int, stream: str) -> int:
    """A 63-bit seed for the named use of ``seed``: independent draws per use."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{stream}".encode()).digest()[:8], "little") >> 1


def _image_files(split_dir: Path) -> tuple[list[Path], list[int], list[str]]:
    """Every file of an ImageFolder split, with labels; an empty split or class is an error."""
    classes = sorted(p.name for p in split_dir.iterdir() if p.is_dir())
    if not classes:
        raise ReflowError(f"{split_dir} has no class folders (expected {split_dir}/<class>/*.jpg)")
    files, labels = [], []
    for label, cls in enumerate(classes):
        names = sorted(e.name for e in os.scandir(split_dir / cls) if e.is_file())
        if not names:
            raise ReflowError(f"class folder {split_dir / cls} holds no images")
        files += [split_dir / cls / n for n in names]
        labels += [label] * len(names)
    return files, labels, classes


def _fingerprint(files: list[Path]) -> str:
    """Cheap identity of a folder of images without decoding: names, sizes and modification
    times, so an image edited in place (same size) invalidates the decoded cache."""
    digest = hashlib.sha256()
    for f in files:
        stat = f.stat()
        digest.update(f"{f.parent.name}/{f.name}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def _decode(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"))
    except Exception as exc:  # PIL raises many types for a damaged file
        raise ReflowError(
            f"cannot decode image {path} ({type(exc).__name__}: {exc}); replace or remove it"
        ) from None


def _decode_folder(files: list[Path], labels: list[int], desc: str) -> dict[str, torch.Tensor]:
    """Decode with PIL, the loader torchvision's ImageFolder uses, so pixels match it exactly."""
    first = _decode(files[0])
    images = np.empty((len(files), *first.shape), dtype=np.uint8)
    for i, f in enumerate(tqdm(files, desc=desc, unit="img", mininterval=1.0)):
        pixels = _decode(f)
        if pixels.shape != first.shape:
            raise ReflowError(
                f"image {f} is {pixels.shape[1]}x{pixels.shape[0]}, the split's images are "
                f"{first.shape[1]}x{first.shape[0]} (from {files[0].name}); replace or remove it"
            )
        images[i] = pixels
    return {
        "images": torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(),
        "labels": torch.tensor(labels, dtype=torch.int64),
    }


def _require_dir(path: Path, how_to_get: str) -> Path:
    if not path.is_dir():
        raise ReflowError(f"data folder not found: {path}. {how_to_get}")
    return path


def _cifar10_jpeg(root: Path, input_size: int) -> ImageData:
    base = root / "cifar10-jpeg"
    splits = {}
    for split, (files, labels) in _cifar10_jpeg_files(root).items():
        key = f"cifar10-jpeg-{split}-{_fingerprint(files)}"
        tensors = cached_tensors(
            key, lambda f=files, y=labels, s=split: _decode_folder(f, y, f"decode {s}")
        )
        entry = DATASETS.get("cifar10-jpeg")
        splits[split] = TensorSplit(tensors["images"], tensors["labels"], entry.mean, entry.std)
    return ImageData("cifar10-jpeg", splits["train"], splits["test"], 10, base)


def _cifar10(root: Path, input_size: int) -> ImageData:
    from torchvision.datasets import CIFAR10

    base = root / "cifar10"
    splits = {}
    for split in ("train", "test"):
        try:
            ds = CIFAR10(str(base), train=split == "train", download=True)
        except Exception as exc:
            raise ReflowError(
                f"CIFAR-10 not found in {base} and the download failed ({exc}). Without internet, "
                "use --dataset cifar10-jpeg, or place cifar-10-batches-py in that folder."
            ) from exc
        images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
        labels = torch.tensor(ds.targets, dtype=torch.int64)
        entry = DATASETS.get("cifar10")
        splits[split] = TensorSplit(images, labels, entry.mean, entry.std)
    return ImageData("cifar10", splits["train"], splits["test"], 10, base)


def _imagenet(root: Path, input_size: int) -> ImageData:
    from torchvision import datasets, transforms

    base = root / "imagenet"
    how = "Expected ImageFolder layout train/<wnid>/*.JPEG and val/<wnid>/*.JPEG; pass --data-root."
    transform = transforms.Compose(
        [
            transforms.Resize(256),
            transforms.CenterCrop(input_size),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )
    train = datasets.ImageFolder(str(_require_dir(base / "train", how)), transform=transform)
    test = datasets.ImageFolder(str(_require_dir(base / "val", how)), transform=transform)
    return ImageData("imagenet", FolderSplit(train), FolderSplit(test), 1000, base)


@dataclass
class SyntheticSplit:
    """Random standard-normal images with random labels, made on demand: image i is drawn from
    its own seeded generator, so any process gets the same pixels without holding the split in
    memory (6,400 images of 224² would be 3.9 GB)."""

    size: int
    input_size: int
    num_classes: int
    seed: int

    def __post_init__(self) -> None:
        generator = torch.Generator().manual_seed(self.seed)
        self.labels = torch.randint(self.num_classes, (self.size,), generator=generator)

    def __len__(self) -> int:
        return self.size

    def image(self, index: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + index + 1)
        return torch.randn(3, self.input_size, self.input_size, generator=generator)

    def batches(self, indices: torch.Tensor, batch_size: int) -> Iterator[Batch]:
        for chunk in indices.split(batch_size):
            x = torch.stack([self.image(int(i)) for i in chunk])
            yield x, self.labels[chunk]


def synthetic(
    input_size: int, num_classes: int = 10, n_train: int = 6400, n_test: int = 1000
) -> ImageData:
    """Random images with random labels: shapes for timing, no meaning."""
    train = SyntheticSplit(n_train, input_size, num_classes, seed=1)
    test = SyntheticSplit(n_test, input_size, num_classes, seed=2)
    return ImageData("synthetic", train, test, num_classes, None)


def _synthetic(root: Path, input_size: int) -> ImageData:
    return synthetic(input_size, num_classes=1000 if input_size > 64 else 10)


@dataclass(frozen=True)
class DatasetEntry:
    """A registered dataset: its loader, what it needs on disk, its split sizes where known
    without reading it, and the normalisation its images get (and why)."""

    name: str
    summary: str
    load: Callable[[Path, int], ImageData]
    #: Raises a one-line error if the data is not usable under a root; returns the split sizes
    #: where they are known without decoding (None: unknown).
    check: Callable[[Path], dict[str, int] | None]
    #: Classes and image side the data comes with (None: follows the model, as ImageNet's
    #: resize-and-crop and synthetic's draws do); a model that differs is refused at planning.
    num_classes: int | None
    input_size: int | None
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    normalisation: str = ""
    #: Whether the images are pixels (so calibration can be corrupted in pixel space).
    pixel_images: bool = True


def _cifar10_jpeg_files(root: Path) -> dict[str, tuple[list[Path], list[int]]]:
    """Each split's image files and labels, checked (folders present, the ten CIFAR-10 classes,
    none empty): what planning checks and what loading decodes, listed once per call."""
    splits = {}
    for split in ("train", "test"):
        files, labels, classes = _image_files(_require_dir(root / "cifar10-jpeg" / split, _HOW))
        if tuple(classes) != CIFAR10_CLASSES:
            raise ReflowError(
                f"{root / 'cifar10-jpeg' / split} has classes {classes}, expected "
                f"{list(CIFAR10_CLASSES)}"
            )
        splits[split] = (files, labels)
    return splits


def _check_cifar10_jpeg(root: Path) -> dict[str, int]:
    return {split: len(files) for split, (files, _) in _cifar10_jpeg_files(root).items()}


def _check_imagenet(root: Path) -> None:
    for folder in ("imagenet/train", "imagenet/val"):
        _require_dir(root / folder, _HOW)
    return None


_HOW = "Set REFLOW_HOME (e.g. REFLOW_HOME=../shared) or pass --data-root; see datasets/README.md."
_CHECKPOINT_NORMALISATION = (
    "ImageNet's mean and std, which every CIFAR checkpoint here was trained with (keep them: "
    "other numbers would change every recorded accuracy)"
)

DATASETS: Registry[DatasetEntry] = Registry("dataset")
for _entry in (
    DatasetEntry(
        "cifar10",
        "CIFAR-10 (torchvision's download; 50,000 train / 10,000 test, 32x32)",
        _cifar10,
        lambda root: {"train": 50000, "test": 10000},
        num_classes=10,
        input_size=32,
        normalisation=_CHECKPOINT_NORMALISATION,
    ),
    DatasetEntry(
        "cifar10-jpeg",
        "CIFAR-10 as JPEG files in ImageFolder layout (REFLOW_HOME/data/cifar10-jpeg)",
        _cifar10_jpeg,
        _check_cifar10_jpeg,
        num_classes=10,
        input_size=32,
        normalisation=_CHECKPOINT_NORMALISATION,
    ),
    DatasetEntry(
        "imagenet",
        "ImageNet-1k in ImageFolder layout (train/, val/), resized 256, centre crop",
        _imagenet,
        _check_imagenet,
        num_classes=1000,
        input_size=None,
        normalisation="ImageNet's mean and std (torchvision's weights)",
    ),
    DatasetEntry(
        "synthetic",
        "random standard-normal images with random labels (shapes for timing, no meaning)",
        _synthetic,
        lambda root: {"train": 6400, "test": 1000},
        num_classes=None,
        input_size=None,
        normalisation="none: the images are drawn already standardised",
        pixel_images=False,
    ),
):
    DATASETS.add(_entry.name, _entry)


def list_datasets() -> list[str]:
    return DATASETS.names()


def check_dataset(name: str, root: Path | None = None) -> dict[str, int] | None:
    """Raise now, before any row runs, if ``name``'s folders are missing or empty (nothing is
    decoded); returns the split sizes where they are known without decoding."""
    return DATASETS.get(name).check(Path(root) if root else paths.data_root())


def load_dataset(name: str, root: Path | None = None, input_size: int = 32) -> ImageData:
    """Load dataset ``name`` from ``root`` (default: `reflow.paths.data_root`)."""
    return DATASETS.get(name).load(Path(root) if root else paths.data_root(), input_size)

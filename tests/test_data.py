import pytest
import torch
from PIL import Image

from reflow.data import CIFAR10_CLASSES, load_dataset
from reflow.errors import ReflowError
from reflow.tensor_cache import cached_tensors


def _fake_cifar(root, per_class: int = 2) -> None:
    g = torch.Generator().manual_seed(0)
    for split in ("train", "test"):
        for cls in CIFAR10_CLASSES:
            folder = root / "cifar10-jpeg" / split / cls
            folder.mkdir(parents=True)
            for i in range(per_class):
                pixels = torch.randint(0, 256, (32, 32, 3), generator=g, dtype=torch.uint8).numpy()
                Image.fromarray(pixels).save(folder / f"{i:04d}.jpg", quality=95)


def test_cifar10_jpeg_decodes_like_imagefolder(tmp_path) -> None:
    from torchvision import datasets, transforms

    _fake_cifar(tmp_path)
    data = load_dataset("cifar10-jpeg", tmp_path)
    assert len(data.train) == len(data.test) == 20
    reference = datasets.ImageFolder(
        str(tmp_path / "cifar10-jpeg" / "test"),
        transform=transforms.Compose(
            [
                transforms.ToTensor(),
                transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
            ]
        ),
    )
    x, y = next(data.test.batches(torch.arange(20), 20))
    for i in range(20):
        ref_x, ref_y = reference[i]
        torch.testing.assert_close(x[i], ref_x, rtol=0, atol=1e-6)
        assert int(y[i]) == ref_y


def test_cache_is_reused_and_rebuilt_when_corrupt(tmp_path) -> None:
    calls = []

    def build():
        calls.append(1)
        return {"x": torch.arange(3)}

    assert torch.equal(cached_tensors("k", build, tmp_path)["x"], torch.arange(3))
    cached_tensors("k", build, tmp_path)
    assert len(calls) == 1
    (tmp_path / "k.pt").write_bytes(b"half a file")
    assert torch.equal(cached_tensors("k", build, tmp_path)["x"], torch.arange(3))
    assert len(calls) == 2
    assert not list(tmp_path.glob("*.tmp"))


def test_missing_data_names_the_path_tried(tmp_path) -> None:
    with pytest.raises(ReflowError, match=f"data folder not found: {tmp_path}/cifar10-jpeg/train"):
        load_dataset("cifar10-jpeg", tmp_path)


def test_unknown_dataset_lists_valid() -> None:
    with pytest.raises(
        ReflowError, match="valid datasets: cifar10, cifar10-jpeg, imagenet, synthetic"
    ):
        load_dataset("mnist")


def test_train_sample_is_seeded_and_streams_differ(data) -> None:
    a = data.train_sample(2, 8, seed=0, stream="calibration")
    b = data.train_sample(2, 8, seed=0, stream="calibration")
    c = data.train_sample(2, 8, seed=1, stream="calibration")
    d = data.train_sample(2, 8, seed=0, stream="gradients")
    assert all(torch.equal(x[0], y[0]) for x, y in zip(a, b, strict=True))
    assert not torch.equal(a[0][0], c[0][0])
    assert not torch.equal(a[0][0], d[0][0])
    assert len(a) == 2 and a[0][0].shape == (8, 3, 32, 32)


def test_train_sample_too_large_is_a_clear_error(data) -> None:
    with pytest.raises(ReflowError, match="need 2560 train images but tiny has 256"):
        data.train_sample(20, 128, 0, "calibration")


def test_test_batches_cover_every_image_once(data) -> None:
    labels = torch.cat([y for _, y in data.test_batches(10)])
    assert sorted(labels.tolist()) == sorted(data.test.labels.tolist())


def test_augment_is_the_training_recipe_crop_and_flip() -> None:
    from reflow.data import IMAGENET_MEAN, IMAGENET_STD, augment

    x = torch.randn(64, 3, 8, 8)
    y = torch.arange(64)
    ((out, labels),) = augment([(x, y)], seed=0)
    assert out.shape == x.shape and torch.equal(labels, y)
    assert torch.equal(augment([(x, y)], seed=0)[0][0], out)  # seeded
    black = (-torch.tensor(IMAGENET_MEAN) / torch.tensor(IMAGENET_STD)).view(3, 1, 1)
    for i in range(64):  # every output is a shifted (maybe mirrored) window of the padded image
        canvas = black.expand(3, 16, 16).clone()
        canvas[:, 4:12, 4:12] = x[i]
        windows = [canvas[:, a : a + 8, b : b + 8] for a in range(9) for b in range(9)]
        assert any(torch.equal(out[i], w) or torch.equal(out[i], w.flip(-1)) for w in windows)

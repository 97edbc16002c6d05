"""Datasets, loaded once into tensors on the run's device and served as index slices.

torchvision is imported where Fashion-MNIST is read, not at the top: it pulls in torch._dynamo (about a
second of start-up), which the synthetic data never need.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from regularization.config import ConfigError
from regularization.step import PRECISIONS


@dataclass
class Dataset:
    """Train, test and (with data.val_size) validation tensors on one device. ``y`` is [n, 1] floats or [n] class indices."""

    X_train: torch.Tensor
    y_train: torch.Tensor
    X_test: torch.Tensor
    y_test: torch.Tensor
    num_outputs: int
    X_val: torch.Tensor | None = None
    y_val: torch.Tensor | None = None

    @property
    def num_inputs(self) -> int:
        return self.X_train.shape[1]

    @property
    def is_classification(self) -> bool:
        return not self.y_train.is_floating_point()


def synthetic_regression(n_train: int, n_test: int, num_inputs: int, noise: float, seed: int, n_val: int = 0) -> Dataset:
    """y = 0.05 + Σᵢ 0.01·xᵢ + ε, with x ~ N(0, I) and ε ~ N(0, noise²).

    Drawn on the CPU from its own generator, so the data depend on the seed alone,
    not on the device or on what else consumed random numbers. The n_val validation examples are drawn after
    the others, from the same stream: the training and test sets are the same with a validation set as without.
    """
    gen = torch.Generator().manual_seed(seed)
    w, b = torch.full((num_inputs, 1), 0.01), 0.05

    def draw(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        X = torch.randn(n, num_inputs, generator=gen)
        return X, X @ w + b + noise * torch.randn(n, 1, generator=gen)

    X, y = draw(n_train + n_test)
    X_val, y_val = draw(n_val) if n_val else (None, None)
    return Dataset(X[:n_train], y[:n_train], X[n_train:], y[n_train:], 1, X_val, y_val)


def fashion_mnist_dir(root: str | Path) -> Path:
    """Where torchvision's FashionMNIST(root) reads its raw files."""
    return Path(root) / "FashionMNIST" / "raw"


# Fashion-MNIST's image size and classes, for data_shapes (which must not import torchvision or read the files).
FASHION_MNIST_PIXELS, FASHION_MNIST_CLASSES = 28 * 28, 10
FILES = "train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte and t10k-labels-idx1-ubyte (or their .gz)"


def ensure_fashion_mnist(root: str | Path, download: bool) -> None:
    """Make the raw IDX files readable by torchvision, or stop with where to put them.

    Gzipped originals in the raw folder are extracted in place (no network); with
    ``download`` torchvision fetches what is missing.
    """
    from torchvision.datasets import FashionMNIST
    from torchvision.datasets.utils import extract_archive

    raw = fashion_mnist_dir(root)
    names = [Path(url).name for url, _ in FashionMNIST.resources]
    missing = [n for n in names if not (raw / n.removesuffix(".gz")).exists()]
    for name in list(missing):
        if (raw / name).exists():
            extract_archive(str(raw / name), str(raw))
            missing.remove(name)
    if missing and download:
        try:
            FashionMNIST(str(root), download=True)
        except (RuntimeError, OSError) as err:  # torchvision's error after every mirror failed; or a socket error it let through
            reason = str(err).strip().splitlines()[-1]
            raise ConfigError(
                f"Invalid config: data.download: could not download Fashion-MNIST from {', '.join(FashionMNIST.mirrors)} ({reason}). "
                f"Put the files {FILES} into {raw.absolute()}/ by hand, or run `make data` to copy a local copy into data/."
            ) from None
    elif missing:
        raise ConfigError(
            f"Invalid config: data.root: Fashion-MNIST not found in {raw}/ (missing {', '.join(missing)}). "
            f"Run `make data` (copies a local copy into data/), set data.download=true on a machine that is online, "
            f"or put the files {FILES} there by hand."
        )


def fashion_mnist(
    root: str | Path, n_train: int | None = None, n_test: int | None = None, val_size: int = 0, split_seed: int = 0
) -> Dataset:
    """Fashion-MNIST as flat float pixels in [0, 1] (what ToTensor gives) and int64 labels; the first n_train and
    n_test images of each split when set (None: all of it); with val_size, that many train images held out for
    validation (``validation_split``, out of the whole train split), n_train then counting the ones left to train on."""
    from torchvision.datasets import FashionMNIST

    def split(train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        ds = FashionMNIST(str(root), train=train, download=False)
        return ds.data.flatten(1).float().div_(255), ds.targets.long()

    (X_train, y_train), (X_test, y_test) = split(True), split(False)
    classes = len(FashionMNIST.classes)
    if not val_size:
        return Dataset(X_train[:n_train], y_train[:n_train], X_test[:n_test], y_test[:n_test], classes)
    train, val = validation_split(len(X_train), val_size, split_seed)
    train = train[:n_train]
    return Dataset(X_train[train], y_train[train], X_test[:n_test], y_test[:n_test], classes, X_val=X_train[val], y_val=y_train[val])


def validation_split(n: int, val_size: int, split_seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of the training and the validation examples among n: a random val_size of them (from split_seed
    alone, so that every job of a study holds out the same ones), each part in the original order."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(split_seed))
    return order[val_size:].sort().values, order[:val_size].sort().values


def idx_count(path: Path) -> int:
    """The number of items in an IDX file, from its header (big-endian, after the 4-byte magic)."""
    with open(path, "rb") as f:
        return int.from_bytes(f.read(8)[4:], "big")


def check_data(cfg: DictConfig) -> None:
    """The data are there, and a validation split leaves training examples (Fashion-MNIST's count, from its header)."""
    if cfg.data.name == "fashion_mnist":
        ensure_fashion_mnist(cfg.data.root, cfg.data.download)
        n = idx_count(fashion_mnist_dir(cfg.data.root) / "train-labels-idx1-ubyte")
        if cfg.data.val_size >= n:
            message = f"must be < the {n} training images (they are what it is held out of), got {cfg.data.val_size}"
            raise ConfigError(f"Invalid config: data.val_size: {message}")
        left = n - cfg.data.val_size
        if cfg.data.n_train is not None and cfg.data.n_train > left:
            message = f"must be <= the {left} training images left after data.val_size={cfg.data.val_size}, got {cfg.data.n_train}"
            raise ConfigError(f"Invalid config: data.n_train: {message}")


def data_shapes(cfg: DictConfig) -> tuple[int, int]:
    """(inputs, outputs) of the configured data, read from the config alone."""
    if cfg.data.name == "synthetic":
        return cfg.data.num_inputs, 1
    return FASHION_MNIST_PIXELS, FASHION_MNIST_CLASSES


def load_data(cfg: DictConfig, device: torch.device) -> Dataset:
    """The job's data on its device. Under ``trainer.precision`` bf16-mixed or 16-mixed the features are stored in
    that dtype: autocast rounds every batch to it before the first matmul anyway, so the rounding is the same, done
    once instead of every step, and each batch gathers half the bytes."""
    data = cfg.data
    val_size = data.get("val_size", 0)
    if data.name == "synthetic":
        ds = synthetic_regression(data.n_train, data.n_test, data.num_inputs, data.noise, cfg.seed, val_size)
    else:
        ds = fashion_mnist(data.root, data.n_train, data.n_test, val_size, data.get("split_seed", 0))
    features = PRECISIONS.get(str(OmegaConf.select(cfg, "trainer.precision", default="32")), torch.float32)
    X_train, X_test = (X.to(device, features) for X in (ds.X_train, ds.X_test))
    X_val, y_val = (ds.X_val.to(device, features), ds.y_val.to(device)) if ds.X_val is not None else (None, None)
    return Dataset(X_train, ds.y_train.to(device), X_test, ds.y_test.to(device), ds.num_outputs, X_val, y_val)


def minibatches(n: int, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """Index batches of one shuffled pass over n examples, drawn on the generator's device."""
    order = torch.randperm(n, generator=generator, device=generator.device)
    yield from order.split(batch_size)

"""The synthetic generator, the Fashion-MNIST loader (on a tiny IDX dataset) and batching."""

from urllib.error import URLError

import pytest
import torch
import torchvision

from regularization.config import ConfigError
from regularization.data import ensure_fashion_mnist, fashion_mnist, minibatches, synthetic_regression
from tests.conftest import make_tiny_fashion


def test_synthetic_follows_the_chapter_formula():
    ds = synthetic_regression(n_train=5000, n_test=100, num_inputs=10, noise=0.01, seed=0)
    X = torch.cat([ds.X_train, torch.ones(len(ds.X_train), 1)], dim=1)
    coef = torch.linalg.lstsq(X, ds.y_train).solution.squeeze()
    assert torch.allclose(coef[:10], torch.full((10,), 0.01), atol=1e-3)  # w = 0.01
    assert coef[10].item() == pytest.approx(0.05, abs=1e-3)  # b = 0.05
    residual = ds.y_train - X @ coef.unsqueeze(1)
    assert residual.std().item() == pytest.approx(0.01, rel=0.05)  # ε ~ N(0, 0.01²)


def test_synthetic_shapes_and_seed():
    a = synthetic_regression(20, 100, 200, 0.01, seed=1)
    b = synthetic_regression(20, 100, 200, 0.01, seed=1)
    c = synthetic_regression(20, 100, 200, 0.01, seed=2)
    assert a.X_train.shape == (20, 200) and a.y_train.shape == (20, 1) and a.X_test.shape == (100, 200)
    assert torch.equal(a.X_train, b.X_train) and torch.equal(a.y_test, b.y_test)
    assert not torch.equal(a.X_train, c.X_train)
    assert not a.is_classification and a.num_inputs == 200


@pytest.mark.parametrize("gz", [False, True])
def test_fashion_mnist_loader_reads_idx(tmp_path, gz):
    root = make_tiny_fashion(tmp_path, n_train=30, n_test=12, gz=gz)
    ensure_fashion_mnist(root, download=False)  # extracts the .gz files without any network
    ds = fashion_mnist(root)
    assert ds.X_train.shape == (30, 784) and ds.X_test.shape == (12, 784)
    assert ds.X_train.dtype == torch.float32 and 0 <= ds.X_train.min() and ds.X_train.max() == 1.0
    assert ds.y_train.dtype == torch.int64 and ds.num_outputs == 10 and ds.is_classification
    # the pixel scale is ToTensor's: byte / 255
    raw = (root / "FashionMNIST" / "raw" / "train-images-idx3-ubyte").read_bytes()[16 : 16 + 784]
    assert torch.allclose(ds.X_train[0], torch.tensor(list(raw), dtype=torch.float32) / 255)


def test_fashion_mnist_n_train_and_n_test_keep_the_first_images_of_each_split(tmp_path):
    """data.n_train / data.n_test: a quick try of a documented command (tests/test_docs.py) on the first k images."""
    root = make_tiny_fashion(tmp_path, n_train=30, n_test=12)
    full, part = fashion_mnist(root), fashion_mnist(root, n_train=7, n_test=5)
    assert torch.equal(part.X_train, full.X_train[:7]) and torch.equal(part.y_train, full.y_train[:7])
    assert torch.equal(part.X_test, full.X_test[:5]) and torch.equal(part.y_test, full.y_test[:5])


def test_missing_fashion_mnist_says_where_to_put_it(tmp_path):
    with pytest.raises(ConfigError, match=r"data\.root.*FashionMNIST/raw.*`make data`.*data\.download=true"):
        ensure_fashion_mnist(tmp_path, download=False)


def test_a_failed_download_is_a_short_error_naming_the_source_and_where_to_put_the_files(tmp_path, monkeypatch):
    def offline(url, **kwargs):  # what urllib raises on a machine without network; never the real network here
        raise URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.datasets.mnist, "download_and_extract_archive", offline)
    with pytest.raises(ConfigError) as err:
        ensure_fashion_mnist(tmp_path, download=True)
    message = str(err.value)
    assert "data.download" in message and "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/" in message
    assert "Temporary failure in name resolution" in message and f"{tmp_path}/FashionMNIST/raw/" in message
    assert "train-images-idx3-ubyte" in message and "`make data`" in message and len(message.splitlines()) == 1


def test_minibatches_cover_every_index_once():
    gen = torch.Generator().manual_seed(0)
    batches = list(minibatches(23, 5, gen))
    assert [len(b) for b in batches] == [5, 5, 5, 5, 3]
    assert sorted(torch.cat(batches).tolist()) == list(range(23))
    again = list(minibatches(23, 5, torch.Generator().manual_seed(0)))
    assert all(torch.equal(x, y) for x, y in zip(batches, again, strict=True))

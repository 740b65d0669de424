import gzip

import numpy as np
import pytest
import torch

from digits.learn import data
from digits.learn.data import DataError, load_mnist, read_idx, read_mnist_dir, split_train_val, stratified_order
from tests.conftest import write_idx


@pytest.mark.unit
def test_read_idx_gzip_and_raw_agree(tmp_path):
    images = np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28)
    gz = read_idx(write_idx(tmp_path / "a.gz", images))
    raw = read_idx(write_idx(tmp_path / "a", images, compress=False))
    np.testing.assert_array_equal(gz, images)
    np.testing.assert_array_equal(raw, images)
    assert gz.flags.writeable  # torch.from_numpy must not warn about read-only memory


@pytest.mark.unit
@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda raw: raw[:-5], "truncated"),
        (lambda raw: raw + b"\0", "trailing bytes"),
        (lambda raw: b"\0\0\x09\x03" + raw[4:], "wrong magic number"),
        (lambda raw: raw[:6], "truncated"),
    ],
)
def test_read_idx_rejects_damaged_files(tmp_path, mutate, message):
    good = write_idx(tmp_path / "good", np.zeros((3, 28, 28), np.uint8), compress=False).read_bytes()
    bad = tmp_path / "train-images-idx3-ubyte"
    bad.write_bytes(mutate(good))
    with pytest.raises(DataError, match=message) as info:
        read_idx(bad)
    assert str(bad) in str(info.value) and "\n" not in str(info.value)


@pytest.mark.unit
def test_read_idx_rejects_corrupt_gzip(tmp_path):
    path = tmp_path / "x.gz"
    path.write_bytes(gzip.compress(b"\0" * 100)[:20])
    with pytest.raises(DataError, match="cannot be read or decompressed"):
        read_idx(path)


@pytest.mark.unit
def test_read_mnist_dir_reads_raw_and_gzip_files(fake_mnist_dir):
    (fake_mnist_dir / "t10k-labels-idx1-ubyte").write_bytes(
        gzip.decompress((fake_mnist_dir / "t10k-labels-idx1-ubyte.gz").read_bytes())
    )
    (fake_mnist_dir / "t10k-labels-idx1-ubyte.gz").unlink()
    m = read_mnist_dir(fake_mnist_dir)
    assert m.train_images.shape == (1200, 28, 28) and m.test_labels.shape == (200,)
    assert len(m.digest) == 16


@pytest.mark.unit
def test_missing_file_and_directory_are_named(fake_mnist_dir, tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        read_mnist_dir(tmp_path / "nowhere")
    (fake_mnist_dir / "train-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="missing train-labels-idx1-ubyte"):
        read_mnist_dir(fake_mnist_dir)


@pytest.mark.unit
def test_mismatched_image_and_label_counts(fake_mnist_dir):
    write_idx(fake_mnist_dir / "train-labels-idx1-ubyte.gz", np.zeros(1199, np.uint8))
    with pytest.raises(DataError, match="1200 images but .* 1199 labels"):
        read_mnist_dir(fake_mnist_dir)


@pytest.mark.unit
def test_wrong_image_size_and_bad_labels(fake_mnist_dir):
    write_idx(fake_mnist_dir / "t10k-images-idx3-ubyte.gz", np.zeros((200, 27, 28), np.uint8))
    with pytest.raises(DataError, match="must be 28x28"):
        read_mnist_dir(fake_mnist_dir)
    write_idx(fake_mnist_dir / "t10k-images-idx3-ubyte.gz", np.zeros((200, 28, 28), np.uint8))
    write_idx(fake_mnist_dir / "t10k-labels-idx1-ubyte.gz", np.full(200, 12, np.uint8))
    with pytest.raises(DataError, match="not a digit"):
        read_mnist_dir(fake_mnist_dir)


@pytest.mark.unit
def test_digest_ignores_compression_but_not_content(fake_mnist_dir):
    before = read_mnist_dir(fake_mnist_dir).digest
    labels = gzip.decompress((fake_mnist_dir / "t10k-labels-idx1-ubyte.gz").read_bytes())
    (fake_mnist_dir / "t10k-labels-idx1-ubyte.gz").unlink()
    (fake_mnist_dir / "t10k-labels-idx1-ubyte").write_bytes(labels)
    assert read_mnist_dir(fake_mnist_dir).digest == before
    write_idx(fake_mnist_dir / "t10k-labels-idx1-ubyte.gz", np.zeros(200, np.uint8))
    (fake_mnist_dir / "t10k-labels-idx1-ubyte").unlink()
    assert read_mnist_dir(fake_mnist_dir).digest != before


@pytest.mark.data  # importing torchvision takes over a second
def test_offline_download_failure_says_where_to_put_files(tmp_path, monkeypatch):
    import torchvision.datasets

    class Offline:
        def __init__(self, *args, **kwargs):
            raise RuntimeError(
                "Error downloading train-images-idx3-ubyte.gz: [Errno -3] Temporary failure in name resolution"
            )

    monkeypatch.setattr(torchvision.datasets, "MNIST", Offline)
    monkeypatch.setenv("DIGITS_DATA_DIR", str(tmp_path / "cache"))
    with pytest.raises(DataError) as info:
        load_mnist(None)
    message = str(info.value)
    assert "could not download MNIST" in message and str(tmp_path / "cache") in message
    assert "train-images-idx3-ubyte.gz" in message and "\n" not in message


@pytest.mark.unit
def test_cache_dir_is_used_without_download(fake_mnist_dir, monkeypatch):
    monkeypatch.setenv("DIGITS_DATA_DIR", str(fake_mnist_dir))
    monkeypatch.setattr(data, "_download", lambda d: pytest.fail("must not download when the cache has the files"))
    assert load_mnist(None).train_images.shape[0] == 1200


@pytest.mark.unit
def test_split_is_deterministic_stratified_and_disjoint():
    labels = np.repeat(np.arange(10), [600, 700, 500, 650, 580, 520, 610, 630, 590, 620])
    a = split_train_val(labels, 500, seed=3)
    b = split_train_val(labels, 500, seed=3)
    c = split_train_val(labels, 500, seed=4)
    np.testing.assert_array_equal(a.val, b.val)
    assert not np.array_equal(a.val, c.val)
    assert len(np.intersect1d(a.train, a.val)) == 0 and len(a.train) + len(a.val) == len(labels)
    expected = np.bincount(labels) / len(labels) * 500
    assert np.abs(np.bincount(labels[a.val], minlength=10) - expected).max() <= 1.5


@pytest.mark.unit
def test_subset_is_a_stratified_prefix():
    labels = np.repeat(np.arange(10), 300)
    split = split_train_val(labels, 500, seed=0, subset=200)
    assert len(split.train) == 200
    assert set(np.bincount(labels[split.train], minlength=10)) <= {19, 20, 21}
    order = stratified_order(labels, 0)
    assert sorted(order.tolist()) == list(range(len(labels)))


@pytest.mark.unit
def test_split_errors():
    labels = np.repeat(np.arange(10), 20)
    with pytest.raises(DataError, match="leaves no training images"):
        split_train_val(labels, 200, seed=0)
    with pytest.raises(DataError, match="larger than"):
        split_train_val(labels, 50, seed=0, subset=500)


@pytest.mark.unit
def test_augment_batch_keeps_shape_and_is_seeded():
    x = torch.zeros(8, 1, 28, 28)
    x[:, :, 10:18, 12:16] = 1.0
    assert data.augment_batch(x, 0.0) is x
    a = data.augment_batch(x, 1.0, torch.Generator().manual_seed(0))
    b = data.augment_batch(x, 1.0, torch.Generator().manual_seed(0))
    assert a.shape == x.shape and torch.equal(a, b)
    assert not torch.allclose(a, x)
    assert 0.0 <= a.min() and a.max() <= 1.0 + 1e-6

import gzip
import hashlib

import numpy as np
import pytest

from digits.learn.data import split_train_val

pytestmark = pytest.mark.data


def test_real_mnist_matches_published_checksums(mnist, mnist_dir):
    assert mnist.train_images.shape == (60000, 28, 28) and mnist.test_images.shape == (10000, 28, 28)
    sums = dict(line.split()[::-1] for line in (mnist_dir / "SHA256SUMS").read_text().splitlines() if line.strip())
    for array, name in ((mnist.train_labels, "train-labels-idx1-ubyte"), (mnist.test_images, "t10k-images-idx3-ubyte")):
        content = gzip.decompress((mnist_dir / f"{name}.gz").read_bytes())
        assert hashlib.sha256(content).hexdigest() == sums.get(name, sums.get(name + ".gz"))
        assert content.endswith(array.tobytes())


def test_real_split_is_stratified(mnist):
    split = split_train_val(mnist.train_labels, 5000, seed=0)
    share = np.bincount(mnist.train_labels[split.val], minlength=10) / 5000
    overall = np.bincount(mnist.train_labels, minlength=10) / 60000
    assert np.abs(share - overall).max() < 0.001

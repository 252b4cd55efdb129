import functools
import gzip
import http.server
import struct
import threading
from pathlib import Path

import numpy as np
import pytest

from ssl_ray.config import DEFAULT_FASHION_MNIST_DIR
from ssl_ray.data.fashion_mnist import DataSourceError, load_split, parse_idx

REAL = Path(DEFAULT_FASHION_MNIST_DIR)
needs_real_data = pytest.mark.skipif(
    not (REAL / "train-images-idx3-ubyte.gz").exists(),
    reason=f"Fashion-MNIST not installed at {REAL} (apt-get install dataset-fashion-mnist)",
)


@needs_real_data
def test_real_files_load_with_expected_shapes_and_labels():
    train = load_split(str(REAL), "train")
    test = load_split(str(REAL), "test")
    assert train.images.shape == (60000, 28, 28) and train.images.dtype == np.uint8
    assert test.images.shape == (10000, 28, 28)
    # The dataset is balanced: 6,000 / 1,000 images per class.
    assert np.bincount(train.labels).tolist() == [6000] * 10
    assert np.bincount(test.labels).tolist() == [1000] * 10
    assert 60 < train.images.mean() < 90  # real clothing images, not zeros


def write_idx(path: Path, array: np.ndarray, compress: bool) -> None:
    raw = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    path.write_bytes(gzip.compress(raw) if compress else raw)


@pytest.mark.parametrize("compress", [True, False])
def test_plain_and_gzipped_directories(tmp_path, compress):
    images = np.arange(5 * 28 * 28, dtype=np.uint32).astype(np.uint8).reshape(5, 28, 28)
    labels = np.array([3, 1, 4, 1, 5], dtype=np.uint8)
    suffix = ".gz" if compress else ""
    write_idx(tmp_path / f"t10k-images-idx3-ubyte{suffix}", images, compress)
    write_idx(tmp_path / f"t10k-labels-idx1-ubyte{suffix}", labels, compress)
    split = load_split(str(tmp_path), "test")
    np.testing.assert_array_equal(split.images, images)
    assert split.labels.tolist() == [3, 1, 4, 1, 5]


def test_truncated_and_foreign_files_are_named(tmp_path):
    raw = bytes([0, 0, 0x08, 1]) + struct.pack(">I", 10) + b"\x01\x02"
    with pytest.raises(DataSourceError, match="truncated"):
        parse_idx(raw, "labels")
    with pytest.raises(DataSourceError, match="not an IDX"):
        parse_idx(b"\x89PNG....", "images")
    with pytest.raises(DataSourceError, match="t10k-images-idx3-ubyte"):
        load_split(str(tmp_path), "test")


def test_url_location_over_real_http(tmp_path):
    """The loader reads the same files from an http(s) URL prefix (a local server here)."""
    images = np.full((3, 28, 28), 7, dtype=np.uint8)
    labels = np.array([9, 0, 2], dtype=np.uint8)
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", images, compress=True)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", labels, compress=False)  # plain: .gz is tried first
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        split = load_split(base, "test")
        np.testing.assert_array_equal(split.images, images)
        assert split.labels.tolist() == [9, 0, 2]
        with pytest.raises(DataSourceError, match="cannot download"):
            load_split(base + "/missing", "test")
    finally:
        server.shutdown()

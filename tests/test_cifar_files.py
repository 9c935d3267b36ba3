import pickle
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch

from vgg_lightning.data.cifar_files import SPECS, DataError, download_and_extract, find_root, load_pickle, read_batches
from vgg_lightning.data.datamodule import ImageDataModule

from .helpers.data import write_pickle


def test_reads_cifar10(cifar10_dir):
    dm = ImageDataModule(data_dir=str(cifar10_dir), download=False, val_size=50)
    dm.setup("fit")
    dm.setup("test")
    images, labels = dm.train_set.images(), dm.train_set.labels
    assert images.dtype == torch.uint8 and images.shape == (150, 3, 32, 32)
    assert labels.dtype == torch.int64 and int(labels.max()) <= 9
    assert dm.test_set.images().shape == (40, 3, 32, 32)
    assert dm.class_names[0] == "airplane" and len(dm.class_names) == 10


def test_pixels_keep_the_official_layout(tmp_path):
    """Row = 1024 red, 1024 green, 1024 blue values, each a 32x32 plane in row-major order."""
    folder = tmp_path / "x"
    folder.mkdir()
    row = np.zeros((1, 3072), np.uint8)
    row[0, 1024 + 32 * 5 + 7] = 200  # green channel, y=5, x=7
    write_pickle(folder / "b", {"data": row, "labels": [3]})
    images, labels = read_batches([folder / "b"], "labels", 10)
    assert images[0, 1, 5, 7] == 200 and images.sum() == 200 and labels.tolist() == [3]


def test_reads_cifar100(cifar100_dir):
    dm = ImageDataModule(dataset="cifar100", data_dir=str(cifar100_dir), download=False, val_size=20)
    dm.setup("fit")
    assert dm.num_classes == 100 and len(dm.class_names) == 100
    assert dm.train_set.images().shape == (100, 3, 32, 32)


def test_accepts_the_batch_folder_itself(cifar10_dir):
    assert find_root(cifar10_dir / "cifar-10-batches-py", SPECS["cifar10"]) == cifar10_dir / "cifar-10-batches-py"


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "empty"),
        (b"\x80\x02}q\x00(X\x04\x00\x00\x00da", "corrupt or truncated"),
        (b"garbage that is no pickle at all", "corrupt or truncated"),
    ],
)
def test_broken_files_name_the_file(cifar10_dir, content, message):
    bad = cifar10_dir / "cifar-10-batches-py" / "data_batch_3"
    bad.write_bytes(content)
    dm = ImageDataModule(data_dir=str(cifar10_dir), download=False, val_size=50)
    with pytest.raises(DataError, match=message) as e:
        dm.setup("fit")
    assert "data_batch_3" in str(e.value)


def test_truncated_real_file_names_the_file(cifar10_dir):
    path = cifar10_dir / "cifar-10-batches-py" / "data_batch_2"
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(DataError, match="data_batch_2.*corrupt or truncated"):
        ImageDataModule(data_dir=str(cifar10_dir), download=False, val_size=50).setup("fit")


@pytest.mark.parametrize(
    "batch, message",
    [
        ({"data": np.zeros((4, 3000), np.uint8), "labels": [0, 1, 2, 3]}, r"shape \(N, 3072\)"),
        ({"data": np.zeros((4, 3072), np.float32), "labels": [0, 1, 2, 3]}, "uint8"),
        ({"data": np.zeros((4, 3072), np.uint8), "labels": [0, 1, 2]}, "one per image"),
        ({"data": np.zeros((4, 3072), np.uint8), "labels": [0, 1, 2, 10]}, r"0\.\.9"),
        ({"data": np.zeros((4, 3072), np.uint8), "labels": [0, -1, 2, 3]}, r"0\.\.9"),
        ({"labels": [0, 1]}, "missing key 'data'"),
        ([1, 2, 3], "expected a dict"),
    ],
)
def test_misshaped_batches(tmp_path, batch, message):
    write_pickle(tmp_path / "data_batch_1", batch)
    with pytest.raises(DataError, match=message) as e:
        read_batches([tmp_path / "data_batch_1"], "labels", 10)
    assert "data_batch_1" in str(e.value)


def test_missing_meta_is_reported(cifar10_dir):
    (cifar10_dir / "cifar-10-batches-py" / "batches.meta").unlink()
    with pytest.raises(DataError, match="batches.meta"):
        ImageDataModule(data_dir=str(cifar10_dir), download=False).prepare_data()


class _Exploit:
    """Unpickling this would create the marker file through os.system."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_restricted_unpickler_refuses_code(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "data_batch_1"
    with open(path, "wb") as f:
        pickle.dump({"data": _Exploit(marker), "labels": [0]}, f, protocol=2)
    # Plain pickle would run it (checked on a copy, so the test proves the file really is hostile).
    with open(path, "rb") as f:
        pickle.load(f)
    assert marker.exists()
    marker.unlink()
    with pytest.raises(DataError, match="refusing to load global 'posix.system'|refusing to load global 'os.system'"):
        load_pickle(path)
    assert not marker.exists()


def test_failed_download_leaves_nothing(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr("urllib.request.urlopen", offline)
    data_dir = tmp_path / "data"
    with pytest.raises(DataError) as e:
        download_and_extract(data_dir, SPECS["cifar10"])
    text = str(e.value)
    assert str(data_dir) in text and "cifar-10-python.tar.gz" in text and "data_batch_1" in text
    assert not data_dir.exists() or not any(data_dir.iterdir())


def test_bad_checksum_leaves_nothing(tmp_path, monkeypatch):
    import io

    monkeypatch.setattr("urllib.request.urlopen", lambda *a, **k: io.BytesIO(b"not the archive"))
    data_dir = tmp_path / "data"
    with pytest.raises(DataError, match="MD5"):
        download_and_extract(data_dir, SPECS["cifar10"])
    assert not data_dir.exists() or not any(data_dir.iterdir())

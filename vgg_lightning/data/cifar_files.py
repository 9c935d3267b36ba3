"""Reading and fetching the official CIFAR python archives, safely.

The batch files are pickles. ``pickle.load`` would run whatever callable a crafted file names, so we read them
with an unpickler that resolves only the few globals the official files use (numpy's array reconstruction).
Every error names the file and says what to do.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vgg_lightning.errors import DataError  # noqa: F401  (raised here; importable from here too)
from vgg_lightning.messages import log


@dataclass(frozen=True)
class CifarSpec:
    name: str
    folder: str  # the folder the official archive extracts to
    url: str
    md5: str
    train_files: tuple[str, ...]
    test_file: str
    meta_file: str
    label_key: str
    names_key: str
    num_classes: int


SPECS = {
    "cifar10": CifarSpec(
        name="cifar10",
        folder="cifar-10-batches-py",
        url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        md5="c58f30108f718f92721af3b95e74349a",
        train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
        test_file="test_batch",
        meta_file="batches.meta",
        label_key="labels",
        names_key="label_names",
        num_classes=10,
    ),
    "cifar100": CifarSpec(
        name="cifar100",
        folder="cifar-100-python",
        url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        md5="eb9058c3a382ffc7106e4002c42a8d85",
        train_files=("train",),
        test_file="test",
        meta_file="meta",
        label_key="fine_labels",
        names_key="fine_label_names",
        num_classes=100,
    ),
}


def _allowed_globals() -> dict[tuple[str, str], object]:
    """The only globals an official CIFAR pickle refers to, mapped to the real objects."""
    import _codecs

    try:
        from numpy._core.multiarray import _reconstruct, scalar
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct, scalar  # type: ignore[no-redef]
    allowed: dict[tuple[str, str], object] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(module, "_reconstruct")] = _reconstruct
        allowed[(module, "scalar")] = scalar
    # Python 3 writes bytes at protocol 2 as _codecs.encode(text, "latin1"): harmless, and needed for copies
    # re-saved by Python 3 tools.
    allowed[("_codecs", "encode")] = _codecs.encode
    return allowed


_ALLOWED = _allowed_globals()


class RestrictedUnpickler(pickle.Unpickler):
    """Resolves only the globals that official CIFAR files contain; anything else is refused."""

    def find_class(self, module: str, name: str) -> object:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load global '{module}.{name}'") from None


def load_pickle(path: Path) -> dict:
    """Load one CIFAR pickle file into a dict with str keys, or raise DataError naming the file."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read it ({e.strerror or e})") from None
    if not raw:
        raise DataError(f"{path}: the file is empty; delete it and fetch the archive again")
    try:
        obj = RestrictedUnpickler(io.BytesIO(raw), encoding="latin1").load()
    except pickle.UnpicklingError as e:
        if "refusing" in str(e):
            raise DataError(f"{path}: not a CIFAR batch file ({e}); it was not loaded") from None
        raise DataError(f"{path}: corrupt or truncated pickle ({e}); delete it and fetch the archive again") from None
    except Exception as e:  # EOFError, ValueError, ... from a truncated or garbled stream
        raise DataError(
            f"{path}: corrupt or truncated pickle ({type(e).__name__}: {e}); delete it and fetch the archive again"
        ) from None
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a dict, found {type(obj).__name__}")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


def read_batches(paths: list[Path], label_key: str, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images as uint8 (N, 3, 32, 32) and labels as int64 (N,), checked for shape, dtype and range."""
    images, labels = [], []
    for path in paths:
        d = load_pickle(path)
        for key in ("data", label_key):
            if key not in d:
                raise DataError(f"{path}: missing key '{key}' (found {sorted(d)})")
        data = d["data"]
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
            shape = getattr(data, "shape", None)
            dtype = getattr(data, "dtype", type(data).__name__)
            raise DataError(f"{path}: 'data' must be a uint8 array of shape (N, 3072), found {dtype} {shape}")
        lab = np.asarray(d[label_key])
        if lab.ndim != 1 or lab.shape[0] != data.shape[0] or not np.issubdtype(lab.dtype, np.integer):
            raise DataError(
                f"{path}: '{label_key}' must be {data.shape[0]} integers, one per image; found {lab.dtype} {lab.shape}"
            )
        if lab.size and (lab.min() < 0 or lab.max() >= num_classes):
            raise DataError(f"{path}: labels must lie in 0..{num_classes - 1}, found {lab.min()}..{lab.max()}")
        images.append(torch.from_numpy(data.reshape(-1, 3, 32, 32).copy()))
        labels.append(torch.from_numpy(lab.astype(np.int64)))
    return torch.cat(images), torch.cat(labels)


def read_class_names(path: Path, key: str, num_classes: int) -> list[str]:
    meta = load_pickle(path)
    names = meta.get(key)
    if not isinstance(names, list) or len(names) != num_classes:
        raise DataError(f"{path}: '{key}' must list {num_classes} class names, found {names!r:.80}")
    return [n.decode() if isinstance(n, bytes) else str(n) for n in names]


def find_root(data_dir: Path, spec: CifarSpec) -> Path | None:
    """The folder holding the batch files: ``data_dir/<official folder>``, or ``data_dir`` itself."""
    for candidate in (data_dir / spec.folder, data_dir):
        if all((candidate / f).is_file() for f in (*spec.train_files, spec.test_file, spec.meta_file)):
            return candidate
    return None


def expected_files(data_dir: Path, spec: CifarSpec) -> list[Path]:
    return [data_dir / spec.folder / f for f in (*spec.train_files, spec.test_file, spec.meta_file)]


def missing_data_message(data_dir: Path, spec: CifarSpec, reason: str) -> str:
    root = data_dir / spec.folder
    present = [f.name for f in expected_files(data_dir, spec) if f.is_file()]
    files = ", ".join(f.name for f in expected_files(data_dir, spec))
    return (
        f"{spec.name} is not in data_dir '{data_dir}' ({reason}).\n"
        f"  Looked for: {root}/{{{files}}}" + (f" (found only {', '.join(present)})" if present else "") + "\n"
        f"  Fix: download {spec.url} by hand and extract it into '{data_dir}':\n"
        f"       tar -xzf {spec.url.rsplit('/', 1)[1]} -C {data_dir}\n"
        f"  or point --data.data_dir at a folder that holds {spec.folder}/."
    )


def md5sum(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def download_and_extract(
    data_dir: Path, spec: CifarSpec, url: str | None = None, md5: str | None = None, timeout: float = 30.0
) -> Path:
    """Fetch the official archive, verify its MD5 and extract it; the final folder appears only when complete.

    Everything is written inside a temporary folder in ``data_dir`` and moved into place with one rename, so an
    interrupted or failed download leaves nothing half-written behind.
    """
    url, md5 = url or spec.url, md5 or spec.md5
    created = not data_dir.exists()
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        return _download_into(data_dir, spec, url, md5, timeout)
    except BaseException:
        if created and not any(data_dir.iterdir()):
            data_dir.rmdir()  # leave no trace of a failed first download
        raise


def _download_into(data_dir: Path, spec: CifarSpec, url: str, md5: str, timeout: float) -> Path:
    log.info(f"Downloading {url} to {data_dir} ...")  # in prepare_data: once per node
    with tempfile.TemporaryDirectory(prefix=".download-", dir=data_dir) as tmp:
        archive = Path(tmp) / url.rsplit("/", 1)[1]
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response, open(archive, "wb") as out:
                shutil.copyfileobj(response, out, 1 << 20)
        except (urllib.error.URLError, OSError, TimeoutError) as e:
            reason = getattr(e, "reason", None) or e
            raise DataError(missing_data_message(data_dir, spec, f"download failed: {reason}")) from None
        digest = md5sum(archive)
        if digest != md5:
            raise DataError(
                missing_data_message(data_dir, spec, f"downloaded archive has MD5 {digest}, expected {md5}")
            )
        extract_to = Path(tmp) / "extracted"
        try:
            with tarfile.open(archive, "r:gz") as tar:
                # The "data" filter refuses absolute paths, links out of the folder and device files.
                safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
                tar.extractall(extract_to, **safe)
        except (tarfile.TarError, OSError, EOFError) as e:
            raise DataError(missing_data_message(data_dir, spec, f"cannot extract {url}: {e}")) from None
        if not (extract_to / spec.folder).is_dir():
            raise DataError(missing_data_message(data_dir, spec, f"{url} holds no {spec.folder}/ folder"))
        final = data_dir / spec.folder
        if final.exists():  # a partial copy from elsewhere: keep it aside rather than delete user files
            os.replace(final, data_dir / f"{spec.folder}.incomplete")
        os.replace(extract_to / spec.folder, final)
    return final

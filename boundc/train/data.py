"""Datasets for certified training, read from local files only (never downloaded at run time).

Every loader returns a :class:`Split` of float images in ``[0, 1]`` shaped
(N, C, H, W) and int64 labels.  Supported: MNIST / Fashion-MNIST (IDX files,
optionally gzipped), CIFAR-10 (python pickle batches or the 100-image CSV) and
scikit-learn's built-in 8×8 digits (the default: ships with scikit-learn).

Where the files are (:func:`resolve_data_dir`, first match): ``--data DIR`` (the
dataset's own directory), ``$BOUNDC_DATA/<dataset>``, then
``../shared/data/<dataset>`` beside the repository (the project's data folder,
see the README).  Nothing else: no absolute paths, no download.
"""

from __future__ import annotations

import gzip
import os
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from boundc.errors import BoundcError

DATASETS = ("digits", "mnist", "fashion-mnist", "cifar10")
#: Environment variable naming a folder with one sub-folder per dataset (``mnist/``, ``cifar10/`` ...).
DATA_ENV = "BOUNDC_DATA"
#: The repository's checkout (``boundc/`` lives in it); its sibling ``shared/data`` is the project's data folder.
REPO_ROOT = Path(__file__).resolve().parents[2]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
               0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


@dataclass
class Split:
    """One split of a dataset: images in [0, 1] (N, C, H, W) and labels (N,)."""

    x: Tensor
    y: Tensor

    def __len__(self) -> int:
        return int(self.y.shape[0])


@dataclass
class Dataset:
    """Train and test splits plus the facts training needs (shape, classes, data range)."""

    name: str
    train: Split
    test: Split
    num_classes: int
    clip: tuple[float, float] = (0.0, 1.0)

    @property
    def in_shape(self) -> tuple[int, ...]:
        """Per-example input shape (C, H, W)."""
        return tuple(self.train.x.shape[1:])


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (``.gz`` allowed) into a numpy array of its declared shape and type."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise BoundcError(f"{path} is not an IDX file (bad magic number)")
    ndim = data[3]
    dims = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    count = int(np.prod(dims)) if dims else 1
    offset = 4 + 4 * ndim
    if len(data) - offset < count * dtype.itemsize:
        raise BoundcError(f"{path} is truncated: expected {count} items of shape {dims}")
    return np.frombuffer(data, dtype=dtype, count=count, offset=offset).reshape(dims)


def _find(directory: Path, stem: str) -> Path:
    for cand in (directory / stem, directory / f"{stem}.gz", directory / stem.replace("-idx", ".idx")):
        if cand.exists():
            return cand
    raise BoundcError(f"missing {stem}[.gz] in {directory} (no download at run time: put the IDX files there)")


def load_idx_pair(directory: str | Path, prefix: str) -> Split:
    """Images and labels ``{prefix}-images-idx3-ubyte[.gz]`` / ``{prefix}-labels-idx1-ubyte[.gz]``."""
    d = Path(directory)
    images = read_idx(_find(d, f"{prefix}-images-idx3-ubyte"))
    labels = read_idx(_find(d, f"{prefix}-labels-idx1-ubyte"))
    if images.shape[0] != labels.shape[0]:
        raise BoundcError(f"{d}: {images.shape[0]} images but {labels.shape[0]} labels for {prefix!r}")
    x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)
    return Split(x, torch.from_numpy(labels.astype(np.int64)))


def load_mnist(directory: str | Path, name: str = "mnist") -> Dataset:
    """MNIST (or Fashion-MNIST: same IDX layout) from ``directory``."""
    return Dataset(name, load_idx_pair(directory, "train"), load_idx_pair(directory, "t10k"), 10)


def load_digits(test_fraction: float = 1 / 6, seed: int = 0) -> Dataset:
    """scikit-learn's 8×8 handwritten digits (1797 images), a fixed shuffled train/test split."""
    from sklearn.datasets import load_digits as sk_digits

    d = sk_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(d.target, dtype=torch.int64)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    n_test = int(round(len(y) * test_fraction))
    te, tr = perm[:n_test], perm[n_test:]
    return Dataset("digits", Split(x[tr], y[tr]), Split(x[te], y[te]), 10)


def read_cifar_csv(path: str | Path) -> Split:
    """CIFAR-10 CSV rows: label, then 3072 pixel values 0–255 interleaved RGB (HWC)."""
    arr = np.loadtxt(path, delimiter=",", dtype=np.float32, ndmin=2)
    if arr.shape[1] != 3073:
        raise BoundcError(f"{path}: expected 3073 columns (label + 32*32*3 pixels), got {arr.shape[1]}")
    x = torch.from_numpy(arr[:, 1:] / 255.0).view(-1, 32, 32, 3).permute(0, 3, 1, 2).contiguous()
    return Split(x, torch.from_numpy(arr[:, 0].astype(np.int64)))


def _cifar_batches(files: list[Path]) -> Split:
    xs, ys = [], []
    for f in files:
        with open(f, "rb") as fh:
            batch = pickle.load(fh, encoding="bytes")
        xs.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        ys.append(np.asarray(batch[b"labels"], dtype=np.int64))
    return Split(torch.from_numpy(np.concatenate(xs).astype(np.float32) / 255.0), torch.from_numpy(np.concatenate(ys)))


def load_cifar10(path: str | Path) -> Dataset:
    """CIFAR-10 from the python batches directory, or from a CSV (used as both splits, for tests)."""
    p = Path(path)
    if p.is_file() or p.suffix == ".csv":
        split = read_cifar_csv(p)
        return Dataset("cifar10", split, split, 10)
    csvs = sorted(p.glob("*.csv"))
    train_files = sorted(p.glob("data_batch_*"))
    if train_files:
        return Dataset("cifar10", _cifar_batches(train_files), _cifar_batches([p / "test_batch"]), 10)
    if csvs:
        split = read_cifar_csv(csvs[0])
        return Dataset("cifar10", split, split, 10)
    raise BoundcError(f"{p}: no CIFAR-10 python batches (data_batch_*) or CSV file found")


def resolve_data_dir(name: str, data_dir: str | os.PathLike | None = None) -> tuple[Path, str]:
    """``(directory, how it was found)`` of dataset ``name``: ``data_dir`` (``--data``), else
    ``$BOUNDC_DATA/<name>``, else ``../shared/data/<name>`` beside the repository.  One
    :class:`BoundcError` listing what was tried when none exists."""
    if data_dir is not None:
        d = Path(data_dir)
        if not d.exists():
            raise BoundcError(f"dataset {name!r}: --data {d} does not exist (no download at run time: put the files there)")
        return d, "--data"
    tried = []
    env = os.environ.get(DATA_ENV)
    if env:
        d = Path(env) / name
        if d.exists():
            return d, f"${DATA_ENV}"
        tried.append(f"${DATA_ENV}/{name} = {d}")
    d = SHARED_DATA / name
    if d.exists():
        return d, "../shared/data beside the repository"
    tried.append(f"../shared/data/{name} = {d}")
    raise BoundcError(f"dataset {name!r} needs its files (no download at run time): pass --data DIR, or set "
                      f"{DATA_ENV} to a folder holding {name}/; tried {'; '.join(tried)}")


def load_dataset(name: str, data_dir: str | None = None) -> Dataset:
    """A dataset by name: ``digits`` (built-in), ``mnist``, ``fashion-mnist`` or ``cifar10`` from the directory
    :func:`resolve_data_dir` finds."""
    if name == "digits":
        return load_digits()
    if name not in DATASETS:
        raise BoundcError(f"unknown dataset {name!r}; choose from {', '.join(DATASETS)}")
    directory, _ = resolve_data_dir(name, data_dir)
    if name == "cifar10":
        return load_cifar10(directory)
    return load_mnist(directory, name)

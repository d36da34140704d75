"""ResNet-18 on CIFAR-10 from a local folder (nothing is ever downloaded): ``resnet18-cifar10``.

CIFAR-10 in the python-pickle format, from a local folder (option ``root``); ResNet-18 for
CIFAR, cross-entropy. A GPU-sized task.

The task builds model and data deterministically from ``setup(seed, device)``: the model is
initialised on the CPU under ``torch.manual_seed(seed)`` (inside ``torch.random.fork_rng``, so
the global RNG is untouched) and then moved to ``device``; the data tensors live on
``device``; every random draw of :meth:`batches` comes from the caller's (CPU)
``torch.Generator``, so a batch stream is reproducible for a generator seed.

``resnet18-cifar10``
--------------------
* **Data** (:func:`load_cifar10`): ``root`` must hold ``data_batch_1`` ... ``data_batch_5``,
  ``test_batch`` and ``batches.meta``, each a pickle (protocol of the original dataset, read
  with ``encoding="bytes"``) of a dict with ``b"data"`` (``(N, 3072)`` uint8, rows = 1024 red,
  1024 green, 1024 blue values of a 32x32 image in row-major order) and ``b"labels"`` (N ints
  in 0..9). A missing folder or file raises ``FileNotFoundError``; a malformed pickle raises
  ``ValueError``; both name the path and the expected files. The files are data, never code:
  they are read by a restricted unpickler (:class:`CifarUnpickler`) that rebuilds numpy arrays
  and plain Python values only, and refuses any other global a pickle names (``os.system``
  in a crafted file), with an error naming the file and the global.
* **Split**: a ``numpy.random.RandomState(seed)`` permutation of the training batches; the
  first ``val_size`` images (default 5000; 0 allowed: no validation metrics) are the
  validation split, the rest the training split. ``test_batch`` is the test split.
* **Normalization**: per-channel mean and std of the *training split* (``channel_mean``,
  ``channel_std``), applied to every split.
* **Augmentation** (``augment=True``, default): the standard random crop with 4-pixel padding
  (padding with black, i.e. the normalized value of a 0 pixel) and a horizontal flip with
  probability 1/2, drawn from the generator per image. Only :meth:`batches` with a
  ``batch_size`` augments; evaluation and the full batch never do.
* **Model**: ResNet-18 for CIFAR (He et al. 2016): 3x3 stem convolution with BatchNorm and
  ReLU, no max-pool, BasicBlocks ``[2, 2, 2, 2]`` with widths ``64, 128, 256, 512`` times the
  option ``width`` (default 1.0; e.g. 0.125 for tests), strides ``1, 2, 2, 2``, 1x1
  projection shortcuts, global average pooling, a linear classifier. PyTorch's default
  initialisation. ``loss`` runs the model in train mode (BatchNorm batch statistics).
* **Batches**: ``(x, y)`` tuples; each epoch a fresh permutation of the training split from
  the generator (the last batch of an epoch may be smaller). ``batch_size=None`` yields the
  *objective batch*: the first ``full_batch_size`` (default 1024) training images, fixed and
  un-augmented (a full batch of 45000 images does not fit a differentiable forward pass);
  ``full_loss`` is the loss of that batch (BatchNorm in train mode, so it updates running
  statistics like any training forward pass).
* **evaluate()** (eval mode, no gradients, chunks of ``eval_batch_size``; the model's mode is
  restored afterwards): ``train_loss``/``train_accuracy`` on the first ``eval_size`` training
  images (un-augmented), ``val_loss``/``val_accuracy`` on the first ``eval_size`` validation
  images, ``test_loss``/``test_accuracy`` on the first ``eval_size`` test images
  (``eval_size`` default 10000; ``None`` = whole splits), and ``generalization_gap`` =
  ``val_loss - train_loss`` (``test_loss - train_loss`` when ``val_size=0``).

Bad option values raise ``ValueError`` naming the option.
"""

from __future__ import annotations

import math
import os
import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._common import build_seeded, check_batch_size, check_int, check_path, epoch_indices
from .base import Batch, Task, TaskInfo
from .registry import register

__all__ = [
    "CIFAR10_FILES",
    "CIFAR10_TRAIN_FILES",
    "CifarResNetTask",
    "CifarUnpickler",
    "ResNet18",
    "augment_batch",
    "load_cifar10",
    "resnet18_cifar10",
]

CIFAR10_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_FILES = (*CIFAR10_TRAIN_FILES, "test_batch", "batches.meta")
CIFAR10_CLASSES = 10
CROP_PADDING = 4


# ----------------------------------------------------------------------------- CIFAR-10 data


def _cifar_expected() -> str:
    return ", ".join(CIFAR10_FILES)


def _latin1(text: str, encoding: str = "latin1") -> bytes:
    """``_codecs.encode`` as protocol-2 pickles written by Python 3 use it (``bytes`` values
    are stored as latin-1 text), for that one encoding only."""
    if not isinstance(text, str) or encoding.replace("-", "").lower() != "latin1":
        raise pickle.UnpicklingError(f"_codecs.encode is allowed only for latin-1 text, got "
                                     f"encoding {encoding!r}")
    return text.encode("latin-1")


def _safe_globals() -> dict[tuple[str, str], Any]:
    """The globals a CIFAR-10 pickle may name: numpy's array reconstruction (under the module
    names numpy 1 and numpy 2 write), ``numpy.ndarray`` and ``numpy.dtype``, and latin-1
    ``_codecs.encode`` (see :func:`_latin1`). Each rebuilds a value; none runs anything else."""
    try:  # numpy >= 2
        from numpy._core import multiarray, numeric
    except ImportError:  # pragma: no cover - numpy 1
        from numpy.core import multiarray, numeric  # type: ignore[no-redef]
    out: dict[tuple[str, str], Any] = {("numpy", "ndarray"): np.ndarray,
                                       ("numpy", "dtype"): np.dtype,
                                       ("_codecs", "encode"): _latin1}
    for module in ("numpy.core", "numpy._core"):
        out[(f"{module}.multiarray", "_reconstruct")] = multiarray._reconstruct
        if hasattr(numeric, "_frombuffer"):  # protocol 5 pickles of arrays
            out[(f"{module}.numeric", "_frombuffer")] = numeric._frombuffer
    return out


class RefusedGlobalError(pickle.UnpicklingError):
    """A pickle names a global that :class:`CifarUnpickler` does not admit."""


class CifarUnpickler(pickle.Unpickler):
    """An unpickler for the CIFAR-10 python format that admits only the globals the format
    needs (:func:`_safe_globals`: numpy array reconstruction) and refuses every other one
    with :class:`RefusedGlobalError` naming it, before anything is imported or called."""

    def find_class(self, module: str, name: str) -> Any:
        """The admitted global ``module.name``, or :class:`RefusedGlobalError`."""
        allowed = _safe_globals()
        if (module, name) in allowed:
            return allowed[(module, name)]
        raise RefusedGlobalError(f"{module}.{name}")


def _unpickle(path: Path, where: str, hint: str = "") -> Any:
    """The pickle at ``path`` (read with ``encoding="bytes"`` by :class:`CifarUnpickler`); one
    that cannot be read raises ``ValueError``: ``"{where} is not a readable pickle
    (error){hint}"``, and one that names a refused global says which."""
    try:
        with open(path, "rb") as f:
            return CifarUnpickler(f, encoding="bytes").load()
    except RefusedGlobalError as e:
        allowed = sorted({f"{m}.{n}" for m, n in _safe_globals()})
        raise ValueError(f"{where} refers to the global {e}, which the CIFAR-10 loader refuses "
                         f"(the files are data: only {', '.join(allowed)} are admitted); it is "
                         "not a CIFAR-10 file, or it was tampered with") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError,
            ImportError, IndexError) as e:
        raise ValueError(f"{where} is not a readable pickle ({type(e).__name__}: {e}){hint}"
                         ) from None


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images ``(N, 3, 32, 32)`` uint8 and labels ``(N,)`` int64 of one CIFAR-10 batch file."""
    where = f"CIFAR-10 batch {str(path)!r}"
    d = _unpickle(path, where, "; expected the CIFAR-10 python format")
    if not isinstance(d, dict):
        raise ValueError(f"{where} holds a {type(d).__name__}, expected a dict with "
                         "b'data' and b'labels'")
    for key in (b"data", b"labels"):
        if key not in d:
            raise ValueError(f"{where} has no key {key!r} (keys: {sorted(map(repr, d))}); "
                             "expected a dict with b'data' (N, 3072) uint8 and b'labels'")
    data = np.asarray(d[b"data"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise ValueError(f"{where}: b'data' must be a (N, 3072) uint8 array, got "
                         f"{data.dtype} {data.shape}")
    try:
        labels = np.asarray(d[b"labels"], dtype=np.int64)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: b'labels' must be a list of integers") from None
    if labels.shape != (data.shape[0],):
        raise ValueError(f"{where}: b'labels' must hold {data.shape[0]} labels, got shape "
                         f"{labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= CIFAR10_CLASSES):
        raise ValueError(f"{where}: labels must be in 0..9, got {labels.min()}..{labels.max()}")
    return data.reshape(-1, 3, 32, 32), labels


def _check_cifar_folder(root: Path) -> None:
    if not root.is_dir():
        raise FileNotFoundError(f"CIFAR-10 folder {str(root)!r} does not exist or is not a "
                                f"folder; expected a folder with {_cifar_expected()} "
                                "(the python-pickle version of CIFAR-10)")
    missing = [name for name in CIFAR10_FILES if not (root / name).is_file()]
    if missing:
        raise FileNotFoundError(f"CIFAR-10 folder {str(root)!r} lacks {', '.join(missing)}; "
                                f"expected {_cifar_expected()}")


def load_cifar10(root: str | os.PathLike[str]) -> dict[str, Any]:
    """Read CIFAR-10 (python-pickle format) from the local folder ``root``.

    Returns a dict with ``x_train`` ``(N, 3, 32, 32)`` uint8 (the five training batches in
    order), ``y_train`` int64, ``x_test``, ``y_test`` and ``label_names`` (a list of str;
    generic names if ``batches.meta`` has none). Errors name the offending path.
    """
    root = Path(root).expanduser()
    _check_cifar_folder(root)
    parts = [_read_cifar_batch(root / name) for name in CIFAR10_TRAIN_FILES]
    x_test, y_test = _read_cifar_batch(root / "test_batch")
    meta_path = root / "batches.meta"
    meta = _unpickle(meta_path, f"CIFAR-10 meta file {str(meta_path)!r}")
    names = meta.get(b"label_names") if isinstance(meta, dict) else None
    if names is None:
        label_names = [f"class_{i}" for i in range(CIFAR10_CLASSES)]
    else:
        label_names = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    return {
        "x_train": np.concatenate([p[0] for p in parts]),
        "y_train": np.concatenate([p[1] for p in parts]),
        "x_test": x_test,
        "y_test": y_test,
        "label_names": label_names,
    }


def augment_batch(x: Tensor, offsets: Tensor, flips: Tensor, fill: Tensor,
                  padding: int = CROP_PADDING) -> Tensor:
    """Random-crop-with-padding and horizontal flip of a batch ``x`` ``(B, C, H, W)``.

    ``offsets`` ``(B, 2)`` holds the (row, column) corner of each crop in the padded image
    (``0..2 * padding``; ``(padding, padding)`` = no shift), ``flips`` ``(B,)`` bools, and
    ``fill`` ``(C,)`` the per-channel padding value.
    """
    b, c, h, w = x.shape
    padded = fill.view(1, c, 1, 1).expand(b, c, h + 2 * padding, w + 2 * padding).clone()
    padded[:, :, padding:padding + h, padding:padding + w] = x
    offsets = offsets.to(x.device)
    flips = flips.to(x.device)
    ar_h = torch.arange(h, device=x.device)
    ar_w = torch.arange(w, device=x.device)
    rows = offsets[:, 0:1] + ar_h  # (B, H)
    cols = offsets[:, 1:2] + torch.where(flips[:, None], w - 1 - ar_w, ar_w)  # (B, W)
    bi = torch.arange(b, device=x.device).view(b, 1, 1, 1)
    ci = torch.arange(c, device=x.device).view(1, c, 1, 1)
    return padded[bi, ci, rows[:, None, :, None], cols[:, None, None, :]]


# ----------------------------------------------------------------------------- ResNet-18


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with BatchNorm, ReLU and a (projection) shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False),
                                          nn.BatchNorm2d(c_out))

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    """ResNet-18 for 32x32 inputs: 3x3 stem, no max-pool, BasicBlocks [2, 2, 2, 2]."""

    def __init__(self, num_classes: int = CIFAR10_CLASSES, width: float = 1.0) -> None:
        super().__init__()
        widths = [max(1, round(c * width)) for c in (64, 128, 256, 512)]
        self.widths = widths
        self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(widths[0]), nn.ReLU())
        layers: list[nn.Module] = []
        c_in = widths[0]
        for i, c in enumerate(widths):
            stride = 1 if i == 0 else 2
            layers += [BasicBlock(c_in, c, stride), BasicBlock(c, c, 1)]
            c_in = c
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(c_in, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.layers(self.stem(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


# ----------------------------------------------------------------------------- CIFAR task


class CifarResNetTask(Task):
    """ResNet-18 on CIFAR-10 from a local folder (see the module docstring).

    Attributes (after :meth:`setup`): ``x_train``, ``y_train``, ``x_val``, ``y_val``,
    ``x_test``, ``y_test`` (normalized float32 images and int64 labels on the device),
    ``channel_mean``, ``channel_std`` (float64 numpy, in [0, 1] pixel units),
    ``label_names``.
    """

    def __init__(self, *, root: Any, augment: bool = True, val_size: int = 5000,
                 width: float = 1.0, full_batch_size: int = 1024,
                 eval_size: int | None = 10000, eval_batch_size: int = 500,
                 steps: int = 20000) -> None:
        self.root = check_path("root", root)
        if not isinstance(augment, bool):
            raise ValueError(f"option 'augment' must be True or False, got {augment!r}")
        self.augment = augment
        self.val_size = check_int("val_size", val_size, 0)
        if isinstance(width, bool) or not isinstance(width, (int, float)) or not (
                math.isfinite(width) and width > 0):
            raise ValueError(f"option 'width' must be a positive number, got {width!r}")
        self.width = float(width)
        self.full_batch_size = check_int("full_batch_size", full_batch_size, 1)
        self.eval_size = None if eval_size is None else check_int("eval_size", eval_size, 1)
        self.eval_batch_size = check_int("eval_batch_size", eval_batch_size, 1)
        steps = check_int("steps", steps, 1)
        _check_cifar_folder(self.root)  # fail early; the files are parsed in setup()
        self.info = TaskInfo(
            name="resnet18-cifar10",
            description=f"ResNet-18 (width x{self.width:g}) on CIFAR-10 from {self.root}",
            kind="neural", steps=steps, target=0.05, target_metric="train_loss",
            options={"root": str(self.root), "augment": augment, "val_size": self.val_size,
                     "width": self.width, "full_batch_size": self.full_batch_size,
                     "eval_size": self.eval_size, "eval_batch_size": self.eval_batch_size,
                     "steps": steps},
        )

    def setup(self, seed: int = 0, device: torch.device | str = "cpu") -> None:
        seed = int(seed)
        device = torch.device(device)
        data = load_cifar10(self.root)
        x_all, y_all = data["x_train"], data["y_train"]
        if self.val_size >= len(x_all):
            raise ValueError(f"option 'val_size' ({self.val_size}) must be smaller than the "
                             f"{len(x_all)} training images in {str(self.root)!r}")
        perm = np.random.RandomState(seed).permutation(len(x_all))
        i_val, i_train = perm[:self.val_size], perm[self.val_size:]
        x_train = x_all[i_train].astype(np.float32) / 255.0
        self.channel_mean = x_train.mean(axis=(0, 2, 3), dtype=np.float64)
        self.channel_std = x_train.std(axis=(0, 2, 3), dtype=np.float64)
        self.channel_std = np.where(self.channel_std > 0, self.channel_std, 1.0)
        mean = torch.tensor(self.channel_mean, dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(self.channel_std, dtype=torch.float32).view(1, 3, 1, 1)

        def norm(x: np.ndarray) -> Tensor:
            t = torch.from_numpy(np.ascontiguousarray(x)).to(torch.float32) / 255.0
            return ((t - mean) / std).to(device)

        self.x_train, self.y_train = norm(x_all[i_train]), torch.from_numpy(
            y_all[i_train]).to(device)
        self.x_val, self.y_val = norm(x_all[i_val]), torch.from_numpy(y_all[i_val]).to(device)
        self.x_test = norm(data["x_test"])
        self.y_test = torch.from_numpy(data["y_test"]).to(device)
        self.label_names = data["label_names"]
        self._fill = (-mean / std).view(3).to(device)  # a black pixel, normalized
        self.n_train = len(self.x_train)
        self.model = build_seeded(seed, lambda: ResNet18(CIFAR10_CLASSES, self.width)).to(
            device)
        self.model.train()

    def batches(self, batch_size: int | None, generator: torch.Generator) -> Iterator[Batch]:
        """Epoch-shuffled, augmented batches, or the objective batch (module docstring)."""
        return self._batches(check_batch_size(batch_size), generator)

    def _batches(self, batch_size: int | None, generator: torch.Generator) -> Iterator[Batch]:
        """The stream of :meth:`batches` (a generator, after the check)."""
        if batch_size is None:
            k = min(self.full_batch_size, self.n_train)
            while True:
                yield self.x_train[:k], self.y_train[:k]
        for idx in epoch_indices(self.n_train, batch_size, generator, self.x_train.device):
            yield self._augment(self.x_train[idx], generator), self.y_train[idx]

    def _augment(self, x: Tensor, generator: torch.Generator) -> Tensor:
        """``x`` randomly cropped and flipped (draws from ``generator``) if ``augment``."""
        if not self.augment:
            return x
        offsets = torch.randint(0, 2 * CROP_PADDING + 1, (len(x), 2), generator=generator)
        flips = torch.rand(len(x), generator=generator) < 0.5
        return augment_batch(x, offsets, flips, self._fill)

    def loss(self, batch: Batch) -> Tensor:
        x, y = batch
        return F.cross_entropy(self.model(x), y)

    def full_loss(self) -> Tensor:
        k = min(self.full_batch_size, self.n_train)
        return self.loss((self.x_train[:k], self.y_train[:k]))

    @torch.no_grad()
    def _metrics(self, x: Tensor, y: Tensor) -> tuple[float, float]:
        if self.eval_size is not None:
            x, y = x[:self.eval_size], y[:self.eval_size]
        total, correct = 0.0, 0
        for s in range(0, len(x), self.eval_batch_size):
            logits = self.model(x[s:s + self.eval_batch_size]).float()
            yb = y[s:s + self.eval_batch_size]
            total += float(F.cross_entropy(logits, yb, reduction="sum"))
            correct += int((logits.argmax(1) == yb).sum())
        return total / len(x), correct / len(x)

    def evaluate(self) -> dict[str, float]:
        was_training = self.model.training
        self.model.eval()
        try:
            metrics: dict[str, float] = {}
            splits = [("train", self.x_train, self.y_train), ("test", self.x_test, self.y_test)]
            if len(self.x_val):
                splits.insert(1, ("val", self.x_val, self.y_val))
            for name, x, y in splits:
                metrics[f"{name}_loss"], metrics[f"{name}_accuracy"] = self._metrics(x, y)
        finally:
            self.model.train(was_training)
        ref = metrics.get("val_loss", metrics["test_loss"])
        metrics["generalization_gap"] = ref - metrics["train_loss"]
        return metrics


# ----------------------------------------------------------------------------- registry


@register("resnet18-cifar10")
def resnet18_cifar10(*, root: Any = None, augment: bool = True, val_size: int = 5000,
                     width: float = 1.0, full_batch_size: int = 1024,
                     eval_size: int | None = 10000, eval_batch_size: int = 500,
                     steps: int = 20000) -> CifarResNetTask:
    """ResNet-18 on CIFAR-10 from the local folder ``root``; default 20000 steps."""
    if root is None:
        raise ValueError("option 'root' is required: a local folder with the python-pickle "
                         f"CIFAR-10 files ({_cifar_expected()})")
    return CifarResNetTask(root=root, augment=augment, val_size=val_size, width=width,
                           full_batch_size=full_batch_size, eval_size=eval_size,
                           eval_batch_size=eval_batch_size, steps=steps)

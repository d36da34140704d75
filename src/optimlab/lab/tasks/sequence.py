"""Sequence lab tasks: MNIST-1D with a 1-D CNN, and character-level language models.

=========================  =================================================================
``mnist1d-cnn``            MNIST-1D (generated locally, 40-point signals, 10 classes) with a
                           small 1-D CNN (3 conv layers, 32 channels, + linear); cross-entropy
``gru-charlm``             character-level LM on Python standard-library source; embedding 64,
                           1-layer GRU with hidden size 128, linear head
``transformer-charlm``     the same data; 2 pre-norm Transformer layers, d_model 64, 4 heads,
                           causal mask, learned positions, no dropout
=========================  =================================================================

Nothing is downloaded; everything is deterministic on CPU for a given seed. Models are float32
and initialised inside ``torch.random.fork_rng`` seeded with ``seed`` (the global RNG is left
untouched). ``TaskInfo.kind`` is ``"neural"`` and ``target_metric`` is ``"train_loss"``.

MNIST-1D
--------
Follows the generator of Greydanus (2020), "Scaling down deep learning" (arXiv:2011.14439,
github.com/greydanus/mnist1d), with its default arguments: template length 12, padding
``[36, 60]``, scale coefficient 0.4, max translation 48, correlated-noise scale 0.25,
iid-noise scale 0.02, shear scale 0.75, final length 40. Each example takes the template of
digit ``i % 10``, then: pads it with a random number of zeros in ``[36, 60]``; linearly
interpolates it to 72 points (dilation); multiplies it by ``1 + 0.4 (u - 0.5)``; rotates it by
a random shift in ``[0, 48)``; replaces its exact zeros (the padding) by Gaussian noise of
scale 0.25 smoothed with a Gaussian filter (sigma 2); adds iid Gaussian noise of scale 0.02;
subtracts a random linear ramp ``0.75 (u - 0.5) * linspace(-0.5, 0.5)`` (shear); and linearly
interpolates the result to 40 points.

What is approximated relative to the published generator:

* the ten 12-point templates are this module's own (:data:`MNIST1D_TEMPLATES`), drawn to
  resemble the published digit shapes, not copied from it; they are normalised the same way
  (zero mean, unit standard deviation per template, then shifted so the first point is 0 and
  divided by 6) so the signal and noise scales match;
* randomness comes from ``numpy.random.RandomState(seed)`` in this module's order of draws
  (the published code uses the global NumPy RNG), so the examples are not the published
  data set, only drawn from the same kind of distribution;
* the smoothing is ``scipy.ndimage.gaussian_filter1d(sigma=2)`` (the published code calls
  ``gaussian_filter(noise, 2)``, the same filter for 1-D input); interpolation is
  ``numpy.interp`` (linear, as ``scipy.interpolate.interp1d(kind="linear")``);
* no train/test standardization, as in the published data (values are O(1)).

Labels cycle through the classes (``i % 10``) before a seeded permutation, so each split is
balanced to within the random split. The splits are generated as one pool of
``n_train + n_val + n_test`` examples (defaults 4000, 500, 1000), permuted with the seed and
cut in that order. ``batches`` yields ``(x, y)`` with ``x`` of shape ``(b, 40)`` (the model adds
the channel dimension), reshuffled every epoch from the generator; ``batch_size=None`` yields
the whole training split. ``evaluate()``: ``train_loss``, ``val_loss``, ``test_loss``,
``train_accuracy``, ``val_accuracy``, ``test_accuracy`` and ``generalization_gap``
(``test_loss - train_loss``).

Character-level language models
-------------------------------
The text is the source of a fixed, documented list of standard-library modules
(:data:`STDLIB_MODULES`), read from the directory of ``os.__file__`` as UTF-8, concatenated in
that order (each file followed by a newline) and truncated to ``n_chars`` (default 200_000).
It therefore depends on the Python version, never on the machine's state or the seed. The
vocabulary is the sorted set of characters of the truncated text. Split by position: the first
80% train, the next 10% validation, the last 10% test. The seed only sets the model's init.

``batches(batch_size, generator)`` yields ``(x, y)`` int64 tensors of shape
``(batch_size, context)`` forever: windows of ``context`` (default 64) characters at starts
drawn uniformly from the generator, and ``y`` the next characters (``x`` shifted by one).
``batch_size=None`` yields one fixed evaluation batch of ``eval_windows`` (default 256)
windows at evenly spaced starts over the training split (a full batch would be every one of
~160k overlapping windows, which is too large to be useful); ``full_loss`` is the loss of that
batch. The loss is the mean cross-entropy (nats) per predicted character. ``evaluate()``:
``train_loss``, ``val_loss``, ``test_loss`` on ``eval_windows`` evenly spaced windows of each
split (fewer if the split is short), and ``bits_per_char`` = ``val_loss / ln 2``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from functools import cache, partial

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._common import (
    build_seeded,
    check_batch_size,
    check_int,
    classification_metrics,
    epoch_batches,
    window_batches,
)
from .base import Batch, Task, TaskInfo
from .registry import register

__all__ = [
    "MNIST1DCNN",
    "MNIST1D_TEMPLATES",
    "STDLIB_MODULES",
    "CharLMTask",
    "GRULanguageModel",
    "MNIST1DTask",
    "TransformerLanguageModel",
    "gru_charlm",
    "make_mnist1d",
    "mnist1d_cnn",
    "stdlib_text",
    "transformer_charlm",
]

# ----------------------------------------------------------------------------- MNIST-1D

#: Our own 12-point digit templates (raw, before normalisation), shaped like the published ones.
MNIST1D_TEMPLATES: tuple[tuple[float, ...], ...] = (
    (5, 6, 6.5, 6.75, 7, 7, 7, 7, 6.75, 6.5, 6, 5),        # 0: a flat-topped bump
    (5, 3, 3, 3.4, 3.8, 4.2, 4.6, 5, 5.4, 5.8, 5, 5),      # 1: dip, then a rising line
    (5, 6, 6.5, 6.5, 6, 5.25, 4.75, 4, 3.5, 3.5, 4, 5),    # 2: up then down (an S)
    (5, 6, 6.5, 6.5, 6, 5, 5, 6, 6.5, 6.5, 6, 5),          # 3: two bumps
    (5, 4.4, 3.8, 3.2, 2.6, 2.6, 5, 5, 5, 5, 5, 5),        # 4: ramp down, jump back
    (5, 3, 3, 3, 3, 5, 6, 6.5, 6.5, 6, 4.5, 5),            # 5: plateau low, then a bump
    (5, 4, 3.5, 3.25, 3, 3, 3, 3, 3.25, 3.5, 4, 5),        # 6: a flat-bottomed dip
    (5, 7, 7, 6.6, 6.2, 5.8, 5.4, 5, 4.6, 4.2, 5, 5),      # 7: jump up, falling line
    (5, 4, 3.5, 3.5, 4, 5, 5, 4, 3.5, 3.5, 4, 5),          # 8: two dips
    (5, 4.4, 3.8, 3.2, 3.0, 3.5, 4, 4.5, 5, 5.5, 6, 5),    # 9: V with a long right arm
)

TEMPLATE_LEN = 12
PADDING = (36, 60)
SCALE_COEFF = 0.4
MAX_TRANSLATION = 48
CORR_NOISE_SCALE = 0.25
IID_NOISE_SCALE = 2e-2
SHEAR_SCALE = 0.75
FINAL_LEN = 40


def _templates() -> np.ndarray:
    x = np.asarray(MNIST1D_TEMPLATES, dtype=np.float64)
    x = x - x.mean(axis=1, keepdims=True)
    x = x / x.std(axis=1, keepdims=True)
    x = x - x[:, :1]
    return x / 6.0


def _interpolate(x: np.ndarray, n: int) -> np.ndarray:
    return np.interp(np.linspace(0.0, 1.0, n), np.linspace(0.0, 1.0, len(x)), x)


def _transform(x: np.ndarray, rng: np.random.RandomState, eps: float = 1e-8) -> np.ndarray:
    from scipy.ndimage import gaussian_filter1d

    low, high = PADDING
    pad = low + int(rng.rand() * (high - low + 1))
    x = np.concatenate([x + eps, np.zeros(pad)])                     # pad
    x = _interpolate(x, TEMPLATE_LEN + high)                          # dilate
    x = x * (1 + SCALE_COEFF * (rng.rand() - 0.5))                    # scale
    k = int(rng.randint(MAX_TRANSLATION))
    x = np.roll(x, k)                                                 # translate
    mask = x != 0
    corr = gaussian_filter1d(CORR_NOISE_SCALE * rng.randn(len(x)), 2)
    x = np.where(mask, x, corr)                                       # correlated noise
    x = x + IID_NOISE_SCALE * rng.randn(len(x))                       # iid noise
    coeff = SHEAR_SCALE * (rng.rand() - 0.5)
    x = x - coeff * np.linspace(-0.5, 0.5, len(x))                    # shear
    return _interpolate(x, FINAL_LEN)                                 # subsample


@cache
def make_mnist1d(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` MNIST-1D examples for ``seed``: ``x`` float32 ``(n, 40)``, ``y`` int64 ``(n,)``,
    in a seeded random order (read-only arrays, cached)."""
    rng = np.random.RandomState(seed)
    templates = _templates()
    y = np.arange(n, dtype=np.int64) % 10
    x = np.stack([_transform(templates[c], rng) for c in y]) if n else np.zeros((0, FINAL_LEN))
    perm = rng.permutation(n)
    x, y = x[perm].astype(np.float32), y[perm]
    x.setflags(write=False)
    y.setflags(write=False)
    return x, y


class MNIST1DCNN(nn.Module):
    """Three 1-D conv layers (ReLU) and a linear classifier; input ``(b, 40)``."""

    def __init__(self, channels: int = 32, n_classes: int = 10) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv1d(1, channels, 5, stride=1, padding=2), nn.ReLU(),
            nn.Conv1d(channels, channels, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv1d(channels, channels, 3, stride=2, padding=1), nn.ReLU(),
        )
        self.head = nn.Linear(channels * (FINAL_LEN // 4), n_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.conv(x.unsqueeze(1)).flatten(1))


class MNIST1DTask(Task):
    """MNIST-1D classification with a small 1-D CNN (see the module docstring)."""

    def __init__(self, *, n_train: int = 4000, n_val: int = 500, n_test: int = 1000,
                 channels: int = 32) -> None:
        self.n_train_opt = check_int("n_train", n_train, 10)
        self.n_val = check_int("n_val", n_val, 1)
        self.n_test = check_int("n_test", n_test, 1)
        self.channels = check_int("channels", channels, 1)
        self.n_train = self.n_train_opt
        self.info = TaskInfo(
            name="mnist1d-cnn", kind="neural", steps=3000, target=0.1,
            description=f"MNIST-1D (40 points, 10 classes, {self.n_train} train) with a 1-D "
                        f"CNN ({self.channels} channels, CE)",
            options={"n_train": self.n_train, "n_val": self.n_val, "n_test": self.n_test,
                     "channels": self.channels},
        )

    def setup(self, seed: int = 0, device: torch.device | str = "cpu") -> None:
        seed = int(seed)
        n = self.n_train + self.n_val + self.n_test
        x, y = make_mnist1d(n, seed)
        a, b = self.n_train, self.n_train + self.n_val
        xs = [torch.tensor(x[s]) for s in (slice(0, a), slice(a, b), slice(b, n))]
        ys = [torch.tensor(y[s]) for s in (slice(0, a), slice(a, b), slice(b, n))]
        self.x_train, self.x_val, self.x_test = (t.to(device) for t in xs)
        self.y_train, self.y_val, self.y_test = (t.to(device) for t in ys)
        self.model = build_seeded(seed, lambda: MNIST1DCNN(self.channels)).to(device)

    def loss(self, batch: Batch) -> Tensor:
        x, y = batch
        return F.cross_entropy(self.model(x), y)

    def full_loss(self) -> Tensor:
        return self.loss((self.x_train, self.y_train))

    def batches(self, batch_size: int | None, generator: torch.Generator) -> Iterator[Batch]:
        """Epoch-shuffled training batches (see the module docstring)."""
        batch_size = check_batch_size(batch_size)
        return epoch_batches(self.x_train, self.y_train, batch_size, generator)

    def evaluate(self) -> dict[str, float]:
        """Loss and accuracy per split and the generalization gap (module docstring)."""
        return classification_metrics(self)


# ----------------------------------------------------------------------------- char LMs

#: Standard-library modules whose source makes up the char-LM text, in this order.
STDLIB_MODULES: tuple[str, ...] = (
    "abc.py", "argparse.py", "bisect.py", "calendar.py", "colorsys.py", "contextlib.py",
    "copy.py", "dataclasses.py", "enum.py", "fractions.py", "functools.py", "heapq.py",
    "inspect.py", "textwrap.py", "typing.py", "string.py", "shlex.py", "pprint.py",
)

TRAIN_FRACTION = 0.8
VAL_FRACTION = 0.1


@cache
def _stdlib_source() -> str:
    root = os.path.dirname(os.__file__)
    parts = []
    for name in STDLIB_MODULES:
        path = os.path.join(root, name)
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                parts.append(f.read() + "\n")
    return "".join(parts)


def stdlib_text(n_chars: int = 200_000) -> str:
    """The first ``n_chars`` characters of the concatenated :data:`STDLIB_MODULES` source."""
    text = _stdlib_source()
    if len(text) < n_chars:
        raise ValueError(f"option 'n_chars' = {n_chars} exceeds the {len(text)} characters of "
                         "standard-library source available")
    return text[:n_chars]


class GRULanguageModel(nn.Module):
    """Embedding 64 -> 1-layer GRU (hidden 128) -> linear head; ``(b, t)`` -> ``(b, t, V)``."""

    def __init__(self, vocab: int, embed: int = 64, hidden: int = 128) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, embed)
        self.gru = nn.GRU(embed, hidden, num_layers=1, batch_first=True)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, x: Tensor) -> Tensor:
        h, _ = self.gru(self.embed(x))
        return self.head(h)


class TransformerLanguageModel(nn.Module):
    """Causal Transformer: token + learned position embeddings, pre-norm encoder layers with a
    causal mask, final LayerNorm and linear head; ``(b, t)`` -> ``(b, t, V)`` for
    ``t <= context``."""

    def __init__(self, vocab: int, context: int, d_model: int = 64, n_heads: int = 4,
                 n_layers: int = 2) -> None:
        super().__init__()
        self.context = context
        self.embed = nn.Embedding(vocab, d_model)
        self.pos = nn.Parameter(torch.randn(context, d_model) * 0.02)
        layer = nn.TransformerEncoderLayer(d_model, n_heads, dim_feedforward=4 * d_model,
                                           dropout=0.0, batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab)

    def forward(self, x: Tensor) -> Tensor:
        t = x.shape[1]
        if t > self.context:
            raise ValueError(f"sequence length {t} exceeds the context {self.context}")
        h = self.embed(x) + self.pos[:t]
        mask = nn.Transformer.generate_square_subsequent_mask(t, device=x.device,
                                                              dtype=h.dtype)
        h = self.blocks(h, mask=mask, is_causal=True)
        return self.head(self.norm(h))


class CharLMTask(Task):
    """Character-level language modelling of standard-library source (module docstring)."""

    arch: str

    def __init__(self, *, name: str, arch: str, n_chars: int = 200_000, context: int = 64,
                 eval_windows: int = 256, steps: int, target: float) -> None:
        self.arch = arch
        self.context = check_int("context", context, 1)
        self.n_chars = check_int("n_chars", n_chars, 1)
        self.eval_windows = check_int("eval_windows", eval_windows, 1)
        # Every split must hold at least one window plus its next character.
        shortest = min(round(TRAIN_FRACTION * self.n_chars), round(VAL_FRACTION * self.n_chars),
                       self.n_chars - round(TRAIN_FRACTION * self.n_chars)
                       - round(VAL_FRACTION * self.n_chars))
        if shortest < self.context + 1:
            raise ValueError(f"option 'n_chars' = {self.n_chars} is too small for "
                             f"context {self.context}: every split (80/10/10%) needs at least "
                             f"context + 1 characters")
        self.text = stdlib_text(self.n_chars)  # raises naming 'n_chars' if too large
        self.info = TaskInfo(
            name=name, kind="neural", steps=steps, target=target,
            description=f"{arch} char-LM on Python stdlib source ({self.n_chars} chars, "
                        f"context {self.context}, CE per char)",
            options={"n_chars": self.n_chars, "context": self.context,
                     "eval_windows": self.eval_windows},
        )

    def setup(self, seed: int = 0, device: torch.device | str = "cpu") -> None:
        seed = int(seed)
        self.vocab = sorted(set(self.text))
        index = {c: i for i, c in enumerate(self.vocab)}
        data = torch.tensor([index[c] for c in self.text], dtype=torch.int64)
        a = round(TRAIN_FRACTION * self.n_chars)
        b = a + round(VAL_FRACTION * self.n_chars)
        self.train_data = data[:a].to(device)
        self.val_data = data[a:b].to(device)
        self.test_data = data[b:].to(device)
        self.n_train = len(self.train_data) - self.context  # number of training windows
        self._eval = {split: self._windows(getattr(self, f"{split}_data"),
                                           self._even_starts(getattr(self, f"{split}_data")))
                      for split in ("train", "val", "test")}
        self.model = build_seeded(seed, self._build_model).to(device)

    def _build_model(self) -> nn.Module:
        """The GRU or Transformer LM for ``arch`` (called under the seed)."""
        if self.arch == "gru":
            return GRULanguageModel(len(self.vocab))
        return TransformerLanguageModel(len(self.vocab), self.context)

    def _even_starts(self, data: Tensor) -> Tensor:
        last = len(data) - self.context - 1
        n = min(self.eval_windows, last + 1)
        return torch.linspace(0, last, n).round().to(torch.int64)

    def _windows(self, data: Tensor, starts: Tensor) -> tuple[Tensor, Tensor]:
        offsets = torch.arange(self.context)
        idx = (starts.unsqueeze(1) + offsets).to(data.device)
        return data[idx], data[idx + 1]

    def loss(self, batch: Batch) -> Tensor:
        x, y = batch
        logits = self.model(x)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))

    def full_loss(self) -> Tensor:
        return self.loss(self._eval["train"])

    def batches(self, batch_size: int | None, generator: torch.Generator) -> Iterator[Batch]:
        """Windows at uniformly random starts, or the evaluation batch (module docstring)."""
        batch_size = check_batch_size(batch_size)
        return window_batches(self._eval["train"], len(self.train_data) - self.context,
                              batch_size, generator, partial(self._windows, self.train_data))

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        metrics = {f"{split}_loss": float(self.loss(self._eval[split]))
                   for split in ("train", "val", "test")}
        metrics["bits_per_char"] = metrics["val_loss"] / math.log(2)
        return metrics


# ----------------------------------------------------------------------------- registry


@register("mnist1d-cnn")
def mnist1d_cnn(*, n_train: int = 4000, n_val: int = 500, n_test: int = 1000,
                channels: int = 32) -> MNIST1DTask:
    """MNIST-1D with a 3-layer 1-D CNN; default 3000 steps, target train loss 0.1."""
    return MNIST1DTask(n_train=n_train, n_val=n_val, n_test=n_test, channels=channels)


@register("gru-charlm")
def gru_charlm(*, n_chars: int = 200_000, context: int = 64,
               eval_windows: int = 256) -> CharLMTask:
    """GRU char-LM on stdlib source; default 3000 steps, target train loss 1.5 nats/char."""
    return CharLMTask(name="gru-charlm", arch="gru", n_chars=n_chars, context=context,
                      eval_windows=eval_windows, steps=3000, target=1.5)


@register("transformer-charlm")
def transformer_charlm(*, n_chars: int = 200_000, context: int = 64,
                       eval_windows: int = 256) -> CharLMTask:
    """Transformer char-LM on stdlib source; default 3000 steps, target train loss 1.5."""
    return CharLMTask(name="transformer-charlm", arch="transformer", n_chars=n_chars,
                      context=context, eval_windows=eval_windows, steps=3000, target=1.5)

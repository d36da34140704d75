"""A byte-level GPT on any local file (nothing is ever downloaded): ``gpt-textfile``.

Any local file, read as bytes (option ``path``); a GPT-style byte-level decoder, next-byte
cross-entropy. A GPU-sized task.

The task builds model and data deterministically from ``setup(seed, device)``: the model is
initialised on the CPU under ``torch.manual_seed(seed)`` (inside ``torch.random.fork_rng``, so
the global RNG is untouched) and then moved to ``device``; the data tensors live on
``device``; every random draw of :meth:`batches` comes from the caller's (CPU)
``torch.Generator``, so a batch stream is reproducible for a generator seed.

``gpt-textfile``
----------------
* **Data**: the file's bytes are the tokens (vocabulary 256). Split by position: the first
  ``1 - val_fraction - test_fraction`` of the bytes train, the next ``val_fraction`` validate,
  the last ``test_fraction`` test (defaults 0.05 each). Every split needs at least
  ``context + 1`` bytes; a missing file raises ``FileNotFoundError``, an empty or too short
  one ``ValueError``, naming the path.
* **Model**: GPT-style decoder: token and learned position embeddings, ``layers`` pre-LayerNorm
  blocks (causal multi-head self-attention with ``heads`` heads, then a 4x GELU MLP, each
  with a residual connection), a final LayerNorm and an output head tied to the token
  embedding. Weights ``N(0, 0.02)``, residual projections ``N(0, 0.02 / sqrt(2 * layers))``
  (GPT-2), biases zero. No dropout.
* **Batches**: ``(x, y)`` tuples of ``(B, context)`` int64 windows at uniformly random start
  positions of the training split (drawn from the generator), ``y`` = ``x`` shifted by one.
  ``batch_size=None`` yields the *objective batch*: the first ``eval_windows`` (default 64)
  non-overlapping windows of the training split; ``full_loss`` is its loss.
* **evaluate()**: ``train_loss``, ``val_loss``, ``test_loss`` (mean next-byte cross-entropy in
  nats on the first ``eval_windows`` non-overlapping windows of each split) and
  ``val_bits_per_byte`` = ``val_loss / ln 2``.

Bad option values raise ``ValueError`` naming the option.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._common import (
    build_seeded,
    check_batch_size,
    check_int,
    check_interval,
    check_path,
    window_batches,
)
from .base import Batch, Task, TaskInfo
from .registry import register

__all__ = ["GPT", "GPTTextFileTask", "gpt_textfile"]


# ----------------------------------------------------------------------------- GPT


class CausalSelfAttention(nn.Module):
    def __init__(self, d_model: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, x: Tensor) -> Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=2)
        q, k, v = (z.view(b, t, self.heads, d // self.heads).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class GPTBlock(nn.Module):
    def __init__(self, d_model: int, heads: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = CausalSelfAttention(d_model, heads)
        self.ln2 = nn.LayerNorm(d_model)
        self.fc = nn.Linear(d_model, 4 * d_model)
        self.proj = nn.Linear(4 * d_model, d_model)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.proj(F.gelu(self.fc(self.ln2(x))))


class GPT(nn.Module):
    """Byte-level GPT-style decoder (pre-LayerNorm, learned positions, tied output head)."""

    def __init__(self, vocab: int = 256, context: int = 128, layers: int = 4,
                 d_model: int = 256, heads: int = 4) -> None:
        super().__init__()
        self.context = context
        self.tok = nn.Embedding(vocab, d_model)
        self.pos = nn.Embedding(context, d_model)
        self.blocks = nn.ModuleList(GPTBlock(d_model, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab, bias=False)
        self.head.weight = self.tok.weight  # weight tying
        for name, p in self.named_parameters():
            if name.endswith("bias"):
                nn.init.zeros_(p)
            elif p.dim() >= 2:
                std = 0.02 / math.sqrt(2 * layers) if name.endswith("proj.weight") else 0.02
                nn.init.normal_(p, 0.0, std)

    def forward(self, idx: Tensor) -> Tensor:
        t = idx.shape[1]
        if t > self.context:
            raise ValueError(f"sequence of {t} tokens exceeds the context of {self.context}")
        x = self.tok(idx) + self.pos(torch.arange(t, device=idx.device))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))


class GPTTextFileTask(Task):
    """A byte-level GPT on a local text file (see the module docstring).

    Attributes (after :meth:`setup`): ``train_data``, ``val_data``, ``test_data`` (uint8 ->
    int64 token tensors on the device).
    """

    def __init__(self, *, path: Any, context: int = 128, layers: int = 4, d_model: int = 256,
                 heads: int = 4, val_fraction: float = 0.05, test_fraction: float = 0.05,
                 eval_windows: int = 64, steps: int = 5000) -> None:
        self.path = check_path("path", path)
        self.context = check_int("context", context, 1)
        self.layers = check_int("layers", layers, 1)
        self.d_model = check_int("d_model", d_model, 1)
        self.heads = check_int("heads", heads, 1)
        if self.d_model % self.heads:
            raise ValueError(f"option 'd_model' ({self.d_model}) must be divisible by option "
                             f"'heads' ({self.heads})")
        self.val_fraction = check_interval("val_fraction", val_fraction, 0.0, 1.0, finite=False)
        self.test_fraction = check_interval("test_fraction", test_fraction, 0.0, 1.0, finite=False)
        if not (self.val_fraction > 0 and self.test_fraction > 0
                and self.val_fraction + self.test_fraction < 1):
            raise ValueError("options 'val_fraction' and 'test_fraction' must be > 0 with a sum "
                             f"< 1, got {self.val_fraction} and {self.test_fraction}")
        self.eval_windows = check_int("eval_windows", eval_windows, 1)
        steps = check_int("steps", steps, 1)
        self._check_file()
        self.info = TaskInfo(
            name="gpt-textfile",
            description=(f"Byte-level GPT ({self.layers}x{self.d_model}, {self.heads} heads, "
                         f"context {self.context}) on {self.path}"),
            kind="neural", steps=steps, target=1.5, target_metric="train_loss",
            options={"path": str(self.path), "context": self.context, "layers": self.layers,
                     "d_model": self.d_model, "heads": self.heads,
                     "val_fraction": self.val_fraction, "test_fraction": self.test_fraction,
                     "eval_windows": self.eval_windows, "steps": steps},
        )

    def _check_file(self) -> None:
        if not self.path.is_file():
            raise FileNotFoundError(f"text file {str(self.path)!r} does not exist or is not a "
                                    "file (option 'path': any local file, read as bytes)")

    def _split_sizes(self, n: int) -> tuple[int, int, int]:
        n_val = int(n * self.val_fraction)
        n_test = int(n * self.test_fraction)
        return n - n_val - n_test, n_val, n_test

    def setup(self, seed: int = 0, device: torch.device | str = "cpu") -> None:
        seed = int(seed)
        device = torch.device(device)
        self._check_file()
        raw = self.path.read_bytes()
        if not raw:
            raise ValueError(f"text file {str(self.path)!r} is empty")
        sizes = self._split_sizes(len(raw))
        need = self.context + 1
        if min(sizes) < need:
            least = math.ceil(need / min(self.val_fraction, self.test_fraction)) + 1
            raise ValueError(
                f"text file {str(self.path)!r} is too short: {len(raw)} bytes split into "
                f"train/val/test of {sizes[0]}/{sizes[1]}/{sizes[2]} bytes, but each split needs "
                f"at least context + 1 = {need} bytes (about {least} bytes in all, or a smaller "
                "option 'context')")
        tokens = torch.frombuffer(bytearray(raw), dtype=torch.uint8).to(torch.int64)
        a, b = sizes[0], sizes[0] + sizes[1]
        self.train_data = tokens[:a].to(device)
        self.val_data = tokens[a:b].to(device)
        self.test_data = tokens[b:].to(device)
        self.n_train = len(self.train_data) - self.context
        self._offsets = torch.arange(self.context + 1, device=device)
        self._fixed = {name: self._fixed_windows(data) for name, data in (
            ("train", self.train_data), ("val", self.val_data), ("test", self.test_data))}
        self.model = build_seeded(seed, lambda: GPT(256, self.context, self.layers,
                                                     self.d_model, self.heads)).to(device)

    def _windows(self, data: Tensor, starts: Tensor) -> tuple[Tensor, Tensor]:
        w = data[starts.to(data.device)[:, None] + self._offsets]
        return w[:, :-1], w[:, 1:]

    def _fixed_windows(self, data: Tensor) -> tuple[Tensor, Tensor]:
        n = min(self.eval_windows, (len(data) - 1) // self.context)
        starts = torch.arange(n) * self.context
        return self._windows(data, starts)

    def batches(self, batch_size: int | None, generator: torch.Generator) -> Iterator[Batch]:
        """Windows at uniformly random starts, or the objective batch (module docstring)."""
        batch_size = check_batch_size(batch_size)
        return window_batches(self._fixed["train"], len(self.train_data) - self.context,
                              batch_size, generator, partial(self._windows, self.train_data))

    def loss(self, batch: Batch) -> Tensor:
        x, y = batch
        logits = self.model(x)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), y.reshape(-1))

    def full_loss(self) -> Tensor:
        return self.loss(self._fixed["train"])

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        was_training = self.model.training
        self.model.eval()
        try:
            metrics = {f"{name}_loss": float(self.loss(self._fixed[name]))
                       for name in ("train", "val", "test")}
        finally:
            self.model.train(was_training)
        metrics["val_bits_per_byte"] = metrics["val_loss"] / math.log(2)
        return metrics


# ----------------------------------------------------------------------------- registry


@register("gpt-textfile")
def gpt_textfile(*, path: Any = None, context: int = 128, layers: int = 4, d_model: int = 256,
                 heads: int = 4, val_fraction: float = 0.05, test_fraction: float = 0.05,
                 eval_windows: int = 64, steps: int = 5000) -> GPTTextFileTask:
    """Byte-level GPT on the local file ``path``; default 5000 steps."""
    if path is None:
        raise ValueError("option 'path' is required: a local text file (read as bytes)")
    return GPTTextFileTask(path=path, context=context, layers=layers, d_model=d_model,
                           heads=heads, val_fraction=val_fraction, test_fraction=test_fraction,
                           eval_windows=eval_windows, steps=steps)

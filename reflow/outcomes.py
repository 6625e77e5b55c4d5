"""Per-example outcomes: the class a row's model predicted for every evaluated example, kept
compact (uint8 or uint16 per example, zlib-compressed) with the identity of the example order,
so that any two rows evaluated on the same examples can be compared pairwise later (McNemar,
paired bootstrap) without running anything again.

The labels of an order are stored once per order (`ResultStore` table ``eval_orders``); a row's
predictions once per row (table ``outcomes``). Shards carry both as base64 text (JSON).
"""

from __future__ import annotations

import base64
import hashlib
import zlib
from dataclasses import dataclass

import numpy as np
import torch

from reflow.errors import ReflowError


def order_identity(dataset: str, indices: torch.Tensor) -> str:
    """The identity of an evaluated example list: a digest of the dataset name and the indices
    in evaluation order (16 hex digits)."""
    digest = hashlib.sha256(dataset.encode() + b"\0")
    digest.update(indices.to(torch.int64).cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def pack(classes: np.ndarray | torch.Tensor) -> bytes:
    """Class indices as zlib-compressed uint8 (≤ 256 classes) or uint16 (≤ 65,536)."""
    values = np.asarray(classes.cpu() if isinstance(classes, torch.Tensor) else classes)
    if values.size and (values.min() < 0 or values.max() > 65535):
        raise ReflowError("class indices must lie in [0, 65535] to be stored")
    dtype = np.uint8 if not values.size or values.max() < 256 else np.uint16
    return bytes([np.dtype(dtype).itemsize]) + zlib.compress(values.astype(dtype).tobytes(), 9)


def unpack(blob: bytes) -> np.ndarray:
    """The class indices `pack` stored, as int64."""
    dtype = {1: np.uint8, 2: np.uint16}[blob[0]]
    return np.frombuffer(zlib.decompress(blob[1:]), dtype=dtype).astype(np.int64)


@dataclass
class Outcomes:
    """One row's evaluated examples: their order's identity, true labels and predicted classes
    (both packed)."""

    eval_order: str
    labels: bytes
    predicted: bytes

    @classmethod
    def of(cls, eval_order: str, labels: torch.Tensor, predicted: torch.Tensor) -> Outcomes:
        return cls(eval_order, pack(labels), pack(predicted))

    def correct(self) -> np.ndarray:
        """Per example: was the prediction right (bool)."""
        return unpack(self.predicted) == unpack(self.labels)

    def to_json(self) -> dict[str, str]:
        """Text form for shard files."""
        return {
            "eval_order": self.eval_order,
            "labels": base64.b64encode(self.labels).decode(),
            "predicted": base64.b64encode(self.predicted).decode(),
        }

    @classmethod
    def from_json(cls, record: dict[str, str]) -> Outcomes:
        return cls(
            record["eval_order"],
            base64.b64decode(record["labels"]),
            base64.b64decode(record["predicted"]),
        )

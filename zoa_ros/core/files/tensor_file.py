"""Shared pieces of the safetensors-based files (packs, banks): content hash and raw metadata."""

from __future__ import annotations

import hashlib
import json

import torch


def content_hash(meta: dict, tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over the metadata JSON and every tensor (name, dtype, shape, bytes)."""
    digest = hashlib.sha256(json.dumps(meta, sort_keys=True).encode())
    for key in sorted(tensors):
        t = tensors[key].detach().cpu().contiguous()
        digest.update(key.encode())
        digest.update(str(t.dtype).encode())
        digest.update(str(tuple(t.shape)).encode())
        digest.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def read_metadata(data: bytes) -> dict:
    """The ``__metadata__`` dict of safetensors bytes, checking the header fits the file."""
    if len(data) < 8:
        raise ValueError("file shorter than a safetensors header")
    size = int.from_bytes(data[:8], "little")
    if size > len(data) - 8:
        raise ValueError("header runs past the end of the file")
    return json.loads(data[8:8 + size]).get("__metadata__", {}) or {}

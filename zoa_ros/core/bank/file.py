"""Knowledge-bank files: ZOA's persistent state between missions.

A safetensors file (never pickle): tensors ``eps`` [P], ``alpha`` [K+1], ``entries`` [K, P],
``similarity`` [K, K], optionally ``detector.mean/var``, ``shift_h`` and ``bn.<i>.mean/var``
(BatchNorm test statistics), ``recall.key_mean/key_var`` and ``recall.<i>.mean/var`` (the
streaming statistics memory, :mod:`~zoa_ros.core.adapt.stats_recall`), and a JSON document in
the safetensors metadata with the format name and version, the fingerprint of the model pack the
bank belongs to, the adapted layers (name, kind, channels), counters, creation time, provenance
strings of the file (``provenance``), per-entry provenance (``entry_provenance``: one object or
``null`` per entry with robot, mission, created, domain_id, source; see
:class:`~zoa_ros.core.adapt.bank.EntryOrigin`) and a sha256 over all of it. Files without
``entry_provenance`` (written before it existed) load with every entry's provenance unknown;
the key is additive, so the format version stays 1 and older readers still read new files;
the ``recall.*`` tensors are additive in the same way (absent: an empty memory).
An empty ``bn_layers`` list on a BatchNorm model (a merged bank) means "start from the pack's
source statistics". Saving is atomic (the old file survives until the new one is complete),
never replaces a file that is not a bank (:func:`check_replaceable`: a mistyped or malicious
path cannot overwrite another file), and never writes a non-finite value. Loading parses and
validates everything (non-finite values refused) into a new object before swapping it into the
method, so a refused file leaves the running bank exactly as it was.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from zoa_ros.core.adapt.bank import BankState, EntryOrigin, utc_now
from zoa_ros.core.files.atomic import atomic_write_bytes
from zoa_ros.core.files.tensor_file import content_hash, read_metadata
from zoa_ros.core.model.pack import ModelPack

FORMAT = "zoa_ros.bank"
FORMAT_VERSION = 1
_META_KEY = "zoa_bank"


class BankError(ValueError):
    """A bank file that cannot be used, with the reason and what to do."""


def encode(state: BankState, pack_fingerprint: str,
           provenance: dict[str, str] | None = None, source: str = "") -> bytes:
    """The file content for ``state`` (see module docstring). Entries stored during this run
    (pending origins) are labelled with ``provenance`` and ``source`` (the file's path)."""
    tensors = state.tensors()
    bad = non_finite(tensors)
    if bad:
        raise BankError(f"bank tensor(s) {bad} hold non-finite values; not saved")
    origins = [None if o is None else o.labelled(provenance or {}, source).to_json()
               for o in state.entry_origins()]
    meta = {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "pack_fingerprint": pack_fingerprint, "method": "zoa",
        "layers": [{"name": n, "kind": k, "channels": c} for n, k, c in state.layers],
        "param_count": int(state.eps.numel()), "entries": int(state.entries.shape[0]),
        "alpha_scale": float(state.alpha_scale), "bn_layers": list(state.bn_names),
        "domain_changes": int(state.domain_changes), "domain_id": int(state.domain_id),
        "created": utc_now(),
        "provenance": {str(k): str(v) for k, v in (provenance or {}).items()},
        "entry_provenance": origins,
    }
    meta["content_sha256"] = content_hash(meta, tensors)
    return st_save(tensors, metadata={_META_KEY: json.dumps(meta)})


def decode(data: bytes, name: str = "<bank>") -> tuple[BankState, dict]:
    """Parse and verify a bank file's bytes: ``(state, metadata)``; :class:`BankError` if the
    file is not a complete, unmodified bank of a supported version."""
    try:
        tensors = st_load(data)
        meta_text = read_metadata(data).get(_META_KEY)
        meta = json.loads(meta_text) if meta_text is not None else None
    except (SafetensorError, ValueError, json.JSONDecodeError) as e:
        raise BankError(f"{name}: not a readable bank file (truncated or not safetensors: {e}); "
                        "restore it from a backup or start with an empty bank") from e
    if not isinstance(meta, dict):
        raise BankError(f"{name}: safetensors file without zoa_ros bank metadata")
    if meta.get("format") != FORMAT:
        raise BankError(f"{name}: not a zoa_ros knowledge bank (format {meta.get('format')!r})")
    version = meta.get("format_version", 0)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise BankError(f"{name}: bank format {version} is newer than this zoa_ros supports "
                        f"({FORMAT_VERSION}); upgrade zoa_ros")
    stored = meta.pop("content_sha256", None)
    if stored != content_hash(meta, tensors):
        raise BankError(f"{name}: content hash mismatch: the bank was modified or corrupted; "
                        "restore it from a backup or start with an empty bank")
    meta["content_sha256"] = stored
    missing = [k for k in ("eps", "alpha", "entries", "similarity") if k not in tensors]
    if missing:
        raise BankError(f"{name}: bank lacks tensors {missing}")
    bad = non_finite(tensors)
    if bad:
        raise BankError(f"{name}: bank tensor(s) {bad} hold non-finite values (NaN or "
                        "infinity); restore it from a backup or start with an empty bank")
    bn = meta.get("bn_layers", [])
    recall = "recall.key_mean" in tensors     # a statistics memory (stats_recall) is stored
    try:
        state = BankState(
            layers=[(d["name"], d["kind"], int(d["channels"])) for d in meta["layers"]],
            eps=tensors["eps"], alpha=tensors["alpha"], entries=tensors["entries"],
            similarity=tensors["similarity"], alpha_scale=float(meta["alpha_scale"]),
            detector_mean=tensors.get("detector.mean"), detector_var=tensors.get("detector.var"),
            shift_h=tensors.get("shift_h"), bn_names=tuple(bn),
            bn_stats=tuple((tensors[f"bn.{i}.mean"], tensors[f"bn.{i}.var"])
                           for i in range(len(bn))),
            domain_changes=int(meta.get("domain_changes", 0)),
            domain_id=int(meta.get("domain_id", 0)),
            origins=_origins(meta.get("entry_provenance")),
            recall_keys=(tensors["recall.key_mean"], tensors["recall.key_var"])
            if recall else None,
            recall_stats=tuple((tensors[f"recall.{i}.mean"], tensors[f"recall.{i}.var"])
                               for i in range(len(bn))) if recall else ())
        state.entry_origins()
    except (KeyError, TypeError, ValueError) as e:
        raise BankError(f"{name}: incomplete bank metadata or tensors ({e!r})") from e
    return state, meta


def non_finite(tensors: dict[str, torch.Tensor]) -> list[str]:
    """The names of the floating-point tensors holding a NaN or an infinity."""
    return sorted(k for k, t in tensors.items()
                  if t.is_floating_point() and not bool(torch.isfinite(t).all()))


_MAX_HEADER = 100 << 20   # a bank's JSON header is a few KB; anything near this is not one


def check_replaceable(path: str | Path) -> None:
    """:class:`BankError` unless ``path`` is free or holds a zoa_ros knowledge bank (of any
    pack, its tensors not read): a save replaces nothing else. Only the file's header is read;
    anything but a regular file (a folder, a device, a pipe) is refused unread."""
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return
    why = "not a regular file" if not path.is_file() else _not_a_bank(path)
    if why:
        raise BankError(f"{path} exists and is not a zoa_ros knowledge bank ({why}); refusing "
                        "to replace it: remove it or choose another bank path")


def _not_a_bank(path: Path) -> str:
    """Why the file at ``path`` is not a bank by its header ("" when it is one)."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            size = int.from_bytes(head, "little")
            if len(head) < 8 or size > _MAX_HEADER:
                return "no safetensors header"
            header = json.loads(f.read(size))
        meta = json.loads(header.get("__metadata__", {}).get(_META_KEY) or "null")
    except (OSError, ValueError, AttributeError, TypeError) as e:
        return f"unreadable header: {type(e).__name__}"
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        return "no zoa_ros bank metadata"
    return ""


def _origins(items: object) -> tuple[EntryOrigin | None, ...]:
    """Parse ``entry_provenance`` (absent in older files: every entry unknown)."""
    if items is None:
        return ()
    if not isinstance(items, list):
        raise TypeError("entry_provenance must be a list")
    return tuple(None if d is None else EntryOrigin.from_json(d) for d in items)


def read(path: str | Path) -> tuple[BankState, dict]:
    path = Path(path)
    if not path.is_file():
        raise BankError(f"{path}: no such bank file")
    return decode(path.read_bytes(), str(path))


def save(path: str | Path, method: object, pack: ModelPack,
         provenance: dict[str, str] | None = None) -> None:
    """Write ``method``'s bank to ``path`` atomically; :class:`BankError` (and nothing written)
    if a file that is not a bank is there or the bank holds a non-finite value."""
    if not hasattr(method, "export_bank"):
        raise BankError(f"method {getattr(method, 'name', method)!r} has no knowledge bank")
    check_replaceable(path)
    atomic_write_bytes(path, encode(method.export_bank(), pack.fingerprint, provenance,
                                    source=str(path)))


def load(path: str | Path, method: object, pack: ModelPack) -> dict:
    """Load the bank at ``path`` into ``method`` (built on ``pack``); returns its metadata.
    Refuses (:class:`BankError`, method unchanged) a bank of another pack, another layer
    layout, a newer format, or a damaged file."""
    if not hasattr(method, "import_bank"):
        raise BankError(f"method {getattr(method, 'name', method)!r} has no knowledge bank")
    state, meta = read(path)
    if meta.get("pack_fingerprint") != pack.fingerprint:
        raise BankError(
            f"{path}: bank belongs to model pack {str(meta.get('pack_fingerprint'))[:12]}, not to "
            f"the loaded pack {pack.fingerprint[:12]}; load the pack it was made with, or start "
            "with an empty bank")
    try:
        method.import_bank(state)
    except ValueError as e:
        raise BankError(f"{path}: bank does not fit this method: {e}") from e
    return meta


def inspect_bank(path: str | Path) -> dict:
    """Metadata, entry count and sizes in bytes of a bank file (verified, not loaded)."""
    path = Path(path)
    state, meta = read(path)
    tensors = state.tensors()
    sizes = {k: int(v.numel() * v.element_size()) for k, v in tensors.items()}
    origins = [None if o is None else o.to_json() for o in state.entry_origins()]
    return {**meta, "path": str(path), "file_bytes": path.stat().st_size,
            "entries": int(state.entries.shape[0]), "entry_provenance": origins,
            "recall_entries": 0 if state.recall_keys is None else
            int(state.recall_keys[0].shape[0]),
            "bytes_per_entry": int(state.entries.shape[1] * 4) if state.entries.dim() == 2 else 0,
            "tensor_bytes": sizes, "total_tensor_bytes": sum(sizes.values())}



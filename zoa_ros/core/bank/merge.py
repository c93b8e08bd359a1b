"""Merging knowledge banks of one model pack (a fleet's robots, several missions) into one.

Semantics (:func:`merge_banks`):

* Inputs must share the pack fingerprint, the adapted layer layout, ``alpha_scale`` and the
  BatchNorm layer list; otherwise :class:`~zoa_ros.core.bank.file.BankError` naming both.
* Entries: the union, in input order (all of the first bank's entries in their order, then the
  second's, ...). While more than ``capacity`` remain, the method's own rule removes one
  (METHOD.md §4.4): the older entry ``i`` of the most similar pair ``i < j`` of the similarity
  matrix (:func:`~zoa_ros.core.adapt.bank.pick_removal`; "older" = earlier in that order).
* The merged bank starts neutral: uniform mixing logits ``α = 0`` over the source entry and all
  stored entries, and ``ε = −Σ_k w_k d_k``, so the effective affine equals the origin's and
  every output equals the (quantized) source model's until adaptation moves α and ε - the same
  convention as ``reset_to_source(keep_bank=True)``. There is no compensation step: no current
  output has to be preserved.
* Detector state and shift history are dropped (the first live batch starts them); BatchNorm
  test statistics are dropped too (loading starts from the pack's source statistics), and so
  are the statistics memories (``stats_recall``): they hold each robot's own camera statistics.
  Counters start at 0. Similarity is recomputed for the merged entries.
* Per-entry provenance is kept (robot, mission, created, domain id); ``source`` becomes the
  input file each entry was taken from. Entries of old files without provenance get only that.

:func:`merge_files` reads and checks every input before writing anything, refuses to replace an
existing output unless ``force``, and writes atomically: never a partial output file.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from zoa_ros.core.adapt.bank import BankState, EntryOrigin, pick_removal, similarity_matrix
from zoa_ros.core.adapt.params import ParamLayout
from zoa_ros.core.bank import file as bank_file
from zoa_ros.core.bank.file import BankError
from zoa_ros.core.files.atomic import atomic_write_bytes


@dataclass(frozen=True)
class BankInput:
    """One bank to merge: a name for messages and provenance, its state and pack."""

    name: str
    state: BankState
    pack_fingerprint: str


@dataclass(frozen=True)
class MergedBank:
    """The merged state; ``picked``/``removed``: ``(input index, entry index)`` of each merged
    entry (in merged order) and of each pruned entry (in removal order)."""

    state: BankState
    pack_fingerprint: str
    picked: tuple[tuple[int, int], ...]
    removed: tuple[tuple[int, int], ...]


def _check_compatible(first: BankInput, other: BankInput) -> None:
    a, b = first.state, other.state
    pair = f"{other.name} vs {first.name}"
    if other.pack_fingerprint != first.pack_fingerprint:
        raise BankError(f"{pair}: banks of different model packs ({other.pack_fingerprint[:12]} "
                        f"vs {first.pack_fingerprint[:12]}) cannot be merged")
    if [tuple(x) for x in b.layers] != [tuple(x) for x in a.layers]:
        raise BankError(f"{pair}: the banks adapt different layers; merge banks made with the "
                        "same 'layers' settings")
    if float(b.alpha_scale) != float(a.alpha_scale):
        raise BankError(f"{pair}: alpha_scale {b.alpha_scale} vs {a.alpha_scale}")
    if b.bn_names and a.bn_names and tuple(b.bn_names) != tuple(a.bn_names):
        raise BankError(f"{pair}: the banks' BatchNorm layers differ")


def _entries(item: BankInput, size: int) -> tuple[torch.Tensor, tuple[EntryOrigin, ...]]:
    entries = item.state.entries
    if entries.dim() != 2 or entries.shape[1] != size:
        raise BankError(f"{item.name}: entries of shape {tuple(entries.shape)} do not fit "
                        f"{size} adapted parameters")
    if not torch.isfinite(entries).all():
        raise BankError(f"{item.name}: entries hold non-finite values")
    try:
        origins = item.state.entry_origins()
    except ValueError as e:
        raise BankError(f"{item.name}: {e}") from e
    sourced = tuple(EntryOrigin(source=item.name) if o is None
                    else dataclasses.replace(o, source=item.name, pending=False) for o in origins)
    return entries.detach().float().cpu(), sourced


def merge_banks(inputs: Sequence[BankInput], capacity: int) -> MergedBank:
    """Union of the inputs' entries pruned to ``capacity`` by the method's similarity rule,
    starting neutral (see the module docstring). Raises :class:`BankError` on any mismatch."""
    if not inputs:
        raise BankError("no banks to merge")
    if capacity < 1:
        raise BankError(f"capacity must be >= 1, not {capacity}")
    first = inputs[0]
    for other in inputs[1:]:
        _check_compatible(first, other)
    layout = ParamLayout(first.state.layers)
    parts = [_entries(item, layout.size) for item in inputs]
    entries = torch.cat([e for e, _ in parts])
    origins = [o for _, os in parts for o in os]
    ids = [(i, j) for i, (e, _) in enumerate(parts) for j in range(e.shape[0])]
    sim = similarity_matrix(layout, entries)
    removed = []
    while len(ids) > capacity:
        r = pick_removal(sim)
        removed.append(ids.pop(r))
        origins.pop(r)
        keep = [i for i in range(sim.shape[0]) if i != r]
        sim, entries = sim[keep][:, keep], entries[keep]
    scale = float(first.state.alpha_scale)
    alpha = torch.zeros(entries.shape[0] + 1)
    bank = torch.cat([entries.new_zeros(1, layout.size), entries])
    eps = -(torch.softmax(scale * alpha, dim=0) @ bank)
    state = BankState(layers=[tuple(x) for x in first.state.layers], eps=eps, alpha=alpha,
                      entries=entries, similarity=sim, alpha_scale=scale, origins=tuple(origins))
    return MergedBank(state, first.pack_fingerprint, tuple(ids), tuple(removed))


def merge_files(paths: Sequence[str | Path], out: str | Path, capacity: int,
                provenance: Mapping[str, str] | None = None, force: bool = False) -> MergedBank:
    """Merge the bank files ``paths`` into ``out`` (atomically). Every input is read and
    checked first: if any is refused, or ``out`` exists and not ``force``, nothing is written
    and :class:`BankError` says why. ``provenance`` labels the output file (e.g. robot,
    mission); ``merged_from`` lists the inputs."""
    out = Path(out)
    if out.exists() and not force:
        raise BankError(f"{out}: already exists; pass --force to replace it")
    inputs = []
    for path in paths:
        state, meta = bank_file.read(path)
        inputs.append(BankInput(str(path), state, str(meta.get("pack_fingerprint"))))
    merged = merge_banks(inputs, capacity)
    labels = {**(provenance or {}), "merged_from": ", ".join(str(p) for p in paths)}
    data = bank_file.encode(merged.state, merged.pack_fingerprint, labels, source=str(out))
    atomic_write_bytes(out, data)
    return merged

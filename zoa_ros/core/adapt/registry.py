"""Adaptation methods by name. A new method is one module plus one line in ``_BUILTIN``
(``name -> "module:Class"``, imported on first use) or a :func:`register` call."""

from __future__ import annotations

import importlib

import torch
from torch import nn

from zoa_ros.core.adapt.base import AdaptMethod
from zoa_ros.core.model.pack import ModelPack

_BUILTIN: dict[str, str] = {
    "none": "zoa_ros.core.adapt.none:NoAdapt",
    "zoa": "zoa_ros.core.adapt.zoa:ZOA",
    "norm": "zoa_ros.core.adapt.norm:NormAdapt",
    "t3a": "zoa_ros.core.adapt.t3a:T3A",
    "tent": "zoa_ros.core.adapt.tent:Tent",
    "foa": "zoa_ros.core.adapt.foa:FOA",
}
_registered: dict[str, type[AdaptMethod]] = {}


def register(cls: type[AdaptMethod]) -> type[AdaptMethod]:
    """Register ``cls`` under ``cls.name`` (usable as a class decorator)."""
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name:
        raise ValueError(f"{cls.__name__} has no 'name'")
    if name in _registered and _registered[name] is not cls:
        raise ValueError(f"method name {name!r} is already registered")
    _registered[name] = cls
    return cls


def method_class(name: str) -> type[AdaptMethod]:
    if name in _registered:
        return _registered[name]
    if name not in _BUILTIN:
        raise ValueError(f"unknown adaptation method {name!r}; available: {available()}")
    module_name, _, class_name = _BUILTIN[name].partition(":")
    return register(getattr(importlib.import_module(module_name), class_name))


def create(name: str, model: nn.Module, pack: ModelPack, config: dict | None,
           generator: torch.Generator) -> AdaptMethod:
    """An instance of method ``name`` bound to ``model`` (which it may modify in place)."""
    return method_class(name)(model, pack, dict(config or {}), generator)


def available() -> list[str]:
    return sorted(set(_BUILTIN) | set(_registered))

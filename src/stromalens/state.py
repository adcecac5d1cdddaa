"""Fitted estimators as plain JSON and back, exactly (scikit-learn style ``state`` /
``from_state``).

A fitted estimator's state is its instance attributes: settings stored by ``__init__`` and the
learned attributes ending in ``_``. :func:`encode` turns them into JSON-able values with a type
tag for what JSON cannot hold (pandas Series and DataFrames, numpy arrays and scalars, nested
estimators); :func:`decode` rebuilds them. Floats go through ``repr`` (what :mod:`json` writes),
which round-trips every float64 exactly, so a preprocessor rebuilt from its state transforms
new data to the same bits as the fitted one (tested).

Loading never imports or instantiates anything but the estimators of :data:`ESTIMATORS`, so a
state file cannot run code.
"""

from __future__ import annotations

import importlib

import numpy as np
import pandas as pd

#: The estimators a state may contain: tag → (module, class).
ESTIMATORS: dict[str, tuple[str, str]] = {
    "FoldPreprocessor": ("stromalens.training.data", "FoldPreprocessor"),
    "ComBat": ("stromalens.radiology.combat", "ComBat"),
    "TargetScaler": ("stromalens.targets.scaling", "TargetScaler"),
    "GeneScaler": ("stromalens.targets.scaling", "GeneScaler"),
    "LRCrosstalk": ("stromalens.targets.lr", "LRCrosstalk"),
}
_TAG = "__type__"


def _class(tag: str) -> type:
    if tag not in ESTIMATORS:
        raise ValueError(f"state names an estimator {tag!r} that cannot be loaded")
    module, name = ESTIMATORS[tag]
    return getattr(importlib.import_module(module), name)


def _index(index: pd.Index) -> dict:
    return {"values": encode(list(index)), "name": index.name}


def _from_index(data: dict) -> pd.Index:
    return pd.Index(decode(data["values"]), name=data["name"])


def encode(value):
    """``value`` as JSON-able data (see the module docstring)."""
    if isinstance(value, bool | str | int | float) or value is None:
        return value
    if isinstance(value, np.generic):
        return {_TAG: "numpy_scalar", "dtype": value.dtype.str, "value": value.item()}
    if isinstance(value, np.ndarray):
        return {_TAG: "ndarray", "dtype": value.dtype.str, "shape": list(value.shape),
                "values": encode(value.ravel().tolist())}  # fmt: skip
    if isinstance(value, pd.Index):
        return {_TAG: "index", **_index(value)}
    if isinstance(value, pd.Series):
        return {_TAG: "series", "index": _index(value.index), "name": value.name,
                "dtype": value.dtype.str, "values": encode(value.tolist())}  # fmt: skip
    if isinstance(value, pd.DataFrame):
        return {_TAG: "frame", "index": _index(value.index), "columns": _index(value.columns),
                "values": encode(value.to_numpy())}  # fmt: skip
    if isinstance(value, list | tuple):
        items = [encode(v) for v in value]
        return items if isinstance(value, list) else {_TAG: "tuple", "values": items}
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            return {_TAG: "dict", "items": [[encode(k), encode(v)] for k, v in value.items()]}
        return {k: encode(v) for k, v in value.items()}
    tag = type(value).__name__
    if tag in ESTIMATORS and _class(tag) is type(value):
        return {_TAG: "estimator", "class": tag, "state": encode(vars(value))}
    raise TypeError(f"cannot store a {type(value).__name__} in an estimator state")


def decode(data):
    """The inverse of :func:`encode`."""
    if isinstance(data, list):
        return [decode(v) for v in data]
    if not isinstance(data, dict):
        return data
    kind = data.get(_TAG)
    if kind is None:
        return {k: decode(v) for k, v in data.items()}
    if kind == "numpy_scalar":
        return np.dtype(data["dtype"]).type(data["value"])
    if kind == "ndarray":
        return np.asarray(decode(data["values"]), dtype=data["dtype"]).reshape(data["shape"])
    if kind == "series":
        return pd.Series(decode(data["values"]), index=_from_index(data["index"]),
                         name=data["name"], dtype=np.dtype(data["dtype"]))  # fmt: skip
    if kind == "frame":
        return pd.DataFrame(decode(data["values"]), index=_from_index(data["index"]),
                            columns=_from_index(data["columns"]))  # fmt: skip
    if kind == "index":
        return _from_index(data)
    if kind == "tuple":
        return tuple(decode(v) for v in data["values"])
    if kind == "dict":
        return {decode(k): decode(v) for k, v in data["items"]}
    if kind == "estimator":
        return restore(_class(data["class"]), data["state"])
    raise ValueError(f"unknown type tag {kind!r} in an estimator state")


def restore(cls: type, state: dict):
    """An instance of ``cls`` whose attributes are the decoded ``state`` (``__init__`` is not
    called: the state holds its settings too)."""
    obj = cls.__new__(cls)
    obj.__dict__.update(decode(state))
    return obj

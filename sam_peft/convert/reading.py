"""Reading the authors' checkpoint files without running anything from them.

Every file is opened with `torch.load(path, map_location="cpu", weights_only=True)` (or safetensors): PyTorch's
restricted unpickler, which builds tensors and plain containers and refuses any other class or function. The one
exception is SAMCL, whose module files pickle whole `nn.Module`s (`torch.save({"A": nn.Linear, ...})`): for those,
`read_checkpoint(..., module_classes=...)` lets the restricted unpickler build inert stand-ins (`PickledModule`)
under the names of the few module classes SAMCL saves. A stand-in is a plain object that only receives the module's
attribute dict (its `_parameters`, `_buffers` and `_modules`); no method of the original class exists or runs.
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, ClassVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from .errors import ConversionError
from .formats import other_format_hint, pickled_class_hint

_UNSUPPORTED_GLOBAL = re.compile(r"GLOBAL (\S+) was not an allowed global")
_UNPICKLER_DETAIL = re.compile(r"WeightsUnpickler error:\s*(.+)")


class PickledModule:
    """Inert stand-in for a pickled `nn.Module`: the unpickler fills its `__dict__`, nothing else happens.

    `source_class` is the full name of the class the file refers to (set on the subclass made for that name).
    """

    source_class: ClassVar[str] = ""


def read_checkpoint(path: str | os.PathLike, method: str, module_classes: Iterable[str] = ()) -> Any:
    """The object saved in `path` (`.safetensors`: its tensors), read without running code from the file.

    Args:
        path: the checkpoint file.
        method: the method it should be a checkpoint of (messages name the right one when it is another's).
        module_classes: full names (`"module.SAMCL.Extra"`) of pickled module classes to read as `PickledModule`
            stand-ins; any other class or function in the file is refused.

    Raises:
        ConversionError: when the file is missing, truncated or corrupt, or holds objects other than tensors and
            plain containers (and the stand-ins asked for).
    """
    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"{path}: no such checkpoint file.")
    if path.suffix == ".safetensors":
        return _read_safetensors(path)
    stand_ins = [
        (type(f"Pickled{index}", (PickledModule,), {"source_class": name}), name)
        for index, name in enumerate(module_classes)
    ]
    try:
        with torch.serialization.safe_globals(stand_ins):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        found = _UNSUPPORTED_GLOBAL.search(str(error))
        if found:
            raise ConversionError(
                f"{path} holds Python objects other than tensors (it refers to {found.group(1)}); it is not a state "
                "dict of this format. sam-peft reads checkpoints with torch.load(weights_only=True) and runs no code "
                "from them." + pickled_class_hint(found.group(1), method)
            ) from error
        raise _unreadable(path, error) from error
    except Exception as error:  # truncated zip (RuntimeError, OSError), empty file (EOFError), not a pickle (KeyError)
        raise _unreadable(path, error) from error


def _unreadable(path: Path, error: Exception) -> ConversionError:
    detail = _UNPICKLER_DETAIL.search(str(error))
    first_sentence = str(error).split(". ")[0].strip()
    if detail:
        reason = detail.group(1).strip()
    elif first_sentence:
        reason = f"{type(error).__name__}: {first_sentence}"
    else:
        reason = type(error).__name__
    return ConversionError(
        f"{path} cannot be read as a PyTorch checkpoint: is it truncated, corrupt or no torch.save file? ({reason})"
    )


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(path, device="cpu")
    except (SafetensorError, OSError) as error:
        raise ConversionError(f"{path} cannot be read as a safetensors file: is it truncated? ({error})") from error


def as_state_dict(obj: Any, path: str | os.PathLike, what: str, method: str) -> dict[str, torch.Tensor]:
    """`obj` as a state dict {name: tensor}; raises, naming `path`, when it is another kind of object.

    Args:
        obj: what `read_checkpoint` returned.
        path: the file it came from (for the message).
        what: what the file should have held, e.g. "SAM-Adapter's model state dict".
        method: the method it should be a checkpoint of (to name the right one when it is another's).
    """
    if not isinstance(obj, Mapping):
        raise ConversionError(f"{path} is not {what}: it holds a {type(obj).__name__}, not a dict of tensors.")
    not_tensors = [str(key) for key, value in obj.items() if not isinstance(value, torch.Tensor)]
    if not_tensors or not obj:
        detail = f"{len(not_tensors)} entries are not tensors, e.g. {not_tensors[0]!r}" if obj else "it is empty"
        raise ConversionError(f"{path} is not {what}: {detail}." + other_format_hint(nested_keys(obj), method))
    return {str(key): value.detach() for key, value in obj.items()}


def nested_keys(obj: Mapping) -> list[str]:
    """The keys of `obj` and, for its values that are dicts (a wrapped `{"state_dict": {...}}`), theirs."""
    keys = []
    for key, value in obj.items():
        keys.append(str(key))
        if isinstance(value, Mapping):
            keys.extend(f"{key}.{inner}" for inner in value)
    return keys


def module_tensors(module: PickledModule, prefix: str = "") -> dict[str, torch.Tensor]:
    """The persistent tensors of a pickled module and its children, named as its `state_dict()` would name them."""
    state = vars(module)
    skipped = set(state.get("_non_persistent_buffers_set") or ())
    tensors = {}
    for group in ("_parameters", "_buffers"):
        for name, value in (state.get(group) or {}).items():
            if isinstance(value, torch.Tensor) and name not in skipped:
                tensors[prefix + name] = value.detach()
    for name, child in (state.get("_modules") or {}).items():
        if isinstance(child, PickledModule):
            tensors.update(module_tensors(child, f"{prefix}{name}."))
    return tensors


def strip_prefix(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """`state` without `prefix` on its keys when every key has it (e.g. DistributedDataParallel's `module.`)."""
    if state and all(key.startswith(prefix) for key in state):
        return {key[len(prefix) :]: value for key, value in state.items()}
    return dict(state)


def key_sample(keys: Iterable[str], count: int = 6) -> str:
    """A short, readable sample of checkpoint keys for error messages."""
    keys = sorted(keys)
    shown = ", ".join(repr(key) for key in keys[:count])
    return shown + (f" and {len(keys) - count} more" if len(keys) > count else "")

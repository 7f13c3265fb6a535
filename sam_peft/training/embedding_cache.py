"""An on-disk cache of frozen SAM image-encoder outputs, for training methods that keep the encoder frozen.

Decoder-only tuning and CAD never change SAM's image encoder, and its output depends only on the image: computed
once per image (and per augmentation, e.g. flipped or not), it can be read back in every later epoch, which then
costs only what trains (the mask decoder, CAD's adapter). In-encoder adapters (LoRA, Conv-LoRA, SAM-Adapter)
change the encoder's output as they train and cannot use it.

```python
cache = EmbeddingCache("cache/", model)  # model: SamForSemanticSegmentation or SamModel, CAD-wrapped or not
cache.fill(loader)  # optional: compute everything up front, with a progress bar
for batch in loader:  # or fill lazily: the first epoch computes, later ones read
    pixel_values = batch["pixel_values"]
    embeddings = cache.get_or_compute(pixel_values)  # the frozen encoder's output, (B, C, h, w)
    loss = model(image_embeddings=embeddings, labels=batch["labels"]).loss  # decoder-only
    loss = model(pixel_values=pixel_values, encoder_embeddings=embeddings, labels=batch["labels"]).loss  # CAD
```

With CAD, `encoder_embeddings=` replaces the encoder run inside the model's forward, where the adapter still runs
(what DDP wraps); `cache.image_embeddings(pixel_values)` instead returns the encoder output plus CAD's adapter,
ready for `model(image_embeddings=...)`, for either method.

SAM 2's and SAM 3's encoders end in an FPN, and their mask decoder reads every level (the last as the image
embedding, the two high-resolution ones through its own `conv_s0` / `conv_s1`, which train with the decoder): the
cache stores the levels the encoder returns, all in one entry per image, and their prompt-free heads take them as
`model(encoder_embeddings=levels)` (CAD: `model(pixel_values=..., encoder_embeddings=levels)`, as on SAM).

Entries are keyed by the image (by default a hash of each image's `pixel_values`; or keys given by the caller,
e.g. a hash of the image file), the augmentation id and the storage dtype, under a directory named by a
fingerprint of the encoder's weights: a changed base model or image finds no entry and recomputes it. Entries are
stored in float16 by default (2 MiB for a 256 x 64 x 64 embedding, 42 MiB for SAM 2's three levels at 1024 px;
float32 keeps them bit-identical to a fresh encoder pass). Each entry is one file written to a temporary name and
renamed into place, each of its tensors with a header holding its key, dtype, shape, length, CRC-32 and the number
of tensors in the entry: an entry cut short or damaged (a crash, a full disk, a copy gone wrong)
fails the check on read, is deleted and recomputed, and is never used.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import struct
import uuid
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from itertools import chain
from pathlib import Path

import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn
from tqdm.auto import tqdm

from ..modeling.methods import METHODS
from ..tuners.cad import CadVisionEncoder

logger = logging.getLogger(__name__)

CACHE_FORMAT_VERSION = 1
_MAGIC = b"SAMPEMB1"
# One record per tensor of an entry: magic, key digest (sha256), dtype code, ndim, number of records in the entry
# (0 in files of one tensor written before entries could hold several), shape (up to 4 dims), payload bytes, CRC-32 of
# the payload; the payload follows its header.
_HEADER = struct.Struct("<8s32sBBH4IQI")
_DTYPE_CODES = {torch.float16: 1, torch.float32: 2, torch.bfloat16: 3}
_CODE_DTYPES = {code: dtype for dtype, code in _DTYPE_CODES.items()}
_TEMPORARY_SUFFIX = ".tmp"
_ENTRY_SUFFIX = ".emb"


class CorruptEntryError(ValueError):
    """A cache entry whose file fails the header, length or checksum check."""


@dataclass
class CacheStats:
    """Counts of entries read (`hits`), computed and written (`misses`) and found damaged and replaced."""

    hits: int = 0
    misses: int = 0
    repaired: int = 0


def _tensor_bytes(tensor: torch.Tensor) -> memoryview:
    """The raw bytes of `tensor` (any dtype, moved to the CPU), without a copy when it is contiguous there."""
    flat = tensor.detach().cpu().contiguous().reshape(-1)
    return memoryview(flat.view(torch.uint8).numpy())


def tensor_digest(tensor: torch.Tensor) -> str:
    """SHA-256 (hex) of a tensor's dtype, shape and values: the default key of an image's `pixel_values`."""
    digest = hashlib.sha256(f"{tensor.dtype}|{tuple(tensor.shape)}|".encode())
    digest.update(_tensor_bytes(tensor))
    return digest.hexdigest()


def encoder_fingerprint(encoder: nn.Module) -> str:
    """SHA-256 (hex) of an encoder's class and of every parameter and buffer (name, dtype, shape, values).

    Reads all weights once (about a second for ViT-B's 360 MB on one core).
    """
    digest = hashlib.sha256(type(encoder).__qualname__.encode())
    for name, tensor in sorted(encoder.state_dict().items()):
        digest.update(f"|{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(_tensor_bytes(tensor))
    return digest.hexdigest()


class WeightWatch:
    """Notices, without reading them, that a module's parameters or buffers were replaced or changed in place.

    Compares each tensor's identity, storage and autograd version counter (bumped by in-place operations such as
    `load_state_dict`, `nn.init.*_` or optimizer steps). Changes made through `.data` bypass the version counter:
    after those, call `EmbeddingCache.refresh()`.
    """

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        self.snapshot = self._state()

    def _state(self) -> tuple:
        tensors = chain(self.module.named_parameters(), self.module.named_buffers())
        return tuple((name, id(t), t.data_ptr(), t._version) for name, t in tensors)

    def changed(self) -> bool:
        return self._state() != self.snapshot

    def reset(self) -> None:
        self.snapshot = self._state()


class EntryStore:
    """A directory of checksummed entries, each one or several tensors in one file written atomically (temporary
    file, then rename).

    `read` returns `None` for a missing entry and raises `CorruptEntryError` for one that fails a header, length or
    CRC-32 check (of any of its tensors); `write` never leaves a partial file under an entry's name.
    """

    def __init__(self, root: str | os.PathLike, fsync: bool = False) -> None:
        self.root = Path(root)
        self.fsync = fsync

    def path(self, key: str) -> Path:
        """File of entry `key` (64 hex digits), in a subdirectory named by its first two."""
        return self.root / key[:2] / f"{key}{_ENTRY_SUFFIX}"

    def read(self, key: str) -> tuple[torch.Tensor, ...] | None:
        """The stored tensors of `key` (CPU, their stored dtypes, in the order written), or `None` when there is no
        entry."""
        path = self.path(key)
        try:
            with open(path, "rb") as file:
                data = bytearray(os.fstat(file.fileno()).st_size)
                length = file.readinto(data)
        except FileNotFoundError:
            return None
        if length != len(data):
            raise CorruptEntryError(f"{path} changed while it was read.")
        tensors: list[torch.Tensor] = []
        offset, count = 0, 1
        while len(tensors) < count:
            if len(data) - offset < _HEADER.size:
                raise CorruptEntryError(f"{path} is shorter than its headers ({len(data)} bytes).")
            magic, key_digest, code, ndim, records, *rest = _HEADER.unpack_from(data, offset)
            shape, nbytes, crc = rest[:4][:ndim], rest[4], rest[5]
            count = max(records, 1) if not tensors else count
            if (
                magic != _MAGIC
                or key_digest != bytes.fromhex(key)
                or code not in _CODE_DTYPES
                or not 0 < ndim <= 4
                or max(records, 1) != count
            ):
                raise CorruptEntryError(f"{path} has an invalid header.")
            dtype = _CODE_DTYPES[code]
            offset += _HEADER.size
            payload = memoryview(data)[offset : offset + nbytes]
            if len(payload) != nbytes or nbytes != math.prod(shape) * dtype.itemsize:
                raise CorruptEntryError(f"{path} holds {len(payload)} payload bytes, its header says {nbytes}.")
            if zlib.crc32(payload) != crc:
                raise CorruptEntryError(f"{path} fails its checksum.")
            tensors.append(torch.frombuffer(payload, dtype=dtype).reshape(shape) if nbytes else torch.empty(shape))
            offset += nbytes
        if offset != len(data):
            raise CorruptEntryError(f"{path} holds {len(data) - offset} bytes after its {count} tensors.")
        return tuple(tensors)

    def write(self, key: str, tensors: torch.Tensor | Sequence[torch.Tensor]) -> None:
        """Store `tensors` (one, or several: float16, bfloat16 or float32, 1 to 4 dims each) as entry `key`,
        atomically."""
        tensors = (tensors,) if isinstance(tensors, torch.Tensor) else tuple(tensors)
        if not tensors or len(tensors) > 0xFFFF:
            raise ValueError(f"An entry holds 1 to 65535 tensors, got {len(tensors)}.")
        records = []
        for tensor in tensors:
            if tensor.dtype not in _DTYPE_CODES or not 0 < tensor.ndim <= 4:
                raise ValueError(f"Cannot store a {tensor.dtype} tensor of shape {tuple(tensor.shape)}.")
            payload = _tensor_bytes(tensor)
            shape = (*tensor.shape, *([0] * (4 - tensor.ndim)))
            header = _HEADER.pack(
                _MAGIC,
                bytes.fromhex(key),
                _DTYPE_CODES[tensor.dtype],
                tensor.ndim,
                len(tensors),
                *shape,
                len(payload),
                zlib.crc32(payload),
            )
            records += [header, payload]
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}{_TEMPORARY_SUFFIX}")
        try:
            with open(temporary, "xb") as file:
                for record in records:
                    file.write(record)
                file.flush()
                if self.fsync:
                    os.fsync(file.fileno())
            os.replace(temporary, path)
        finally:
            temporary.unlink(missing_ok=True)

    def remove(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)

    def entry_keys(self) -> list[str]:
        """Keys of every entry file (valid or not)."""
        return sorted(p.name.removesuffix(_ENTRY_SUFFIX) for p in self.root.glob(f"??/*{_ENTRY_SUFFIX}"))

    def remove_temporary_files(self) -> int:
        """Delete temporary files left by interrupted writes; returns how many. Not while another process writes."""
        leftovers = list(self.root.glob(f"??/.*{_TEMPORARY_SUFFIX}"))
        for path in leftovers:
            path.unlink(missing_ok=True)
        return len(leftovers)


def _frozen_encoder_methods() -> str:
    return ", ".join(method.title for method in METHODS.values() if method.frozen_encoder)


def frozen_vision_encoder(model: nn.Module) -> tuple[nn.Module, CadVisionEncoder | None]:
    """The frozen SAM image encoder of `model` (a SAM model, CAD-wrapped or not, or a PeftModel of one).

    Returns the encoder without any CAD wrapper, and the CAD wrapper (or `None`).

    Raises:
        ValueError: when `model` has no `vision_encoder`, or its encoder holds other adapters (their output changes
            as they train, so it cannot be cached).
    """
    encoder = next((m for name, m in model.named_modules() if name.rpartition(".")[2] == "vision_encoder"), None)
    if encoder is None:
        raise ValueError(f"{type(model).__name__} has no `vision_encoder`: the embedding cache serves SAM models.")
    cad = encoder if isinstance(encoder, CadVisionEncoder) else None
    base = cad.base_layer if cad is not None else encoder
    adapted = next((name for name, m in base.named_modules() if isinstance(m, BaseTunerLayer)), None)
    if adapted is not None:
        raise ValueError(
            f"The vision encoder holds an adapter layer ({adapted!r}, {type(base.get_submodule(adapted)).__name__}): "
            "its output changes as the adapter trains, so it cannot be cached. The embedding cache serves methods "
            f"that keep the encoder frozen: {_frozen_encoder_methods()}."
        )
    return base, cad


class EmbeddingCache:
    """Frozen SAM image-encoder outputs on disk, computed once per image, augmentation and base model.

    Args:
        cache_dir: Root directory; each encoder fingerprint and storage dtype gets its own subdirectory.
        model: The model being trained (SAM / SamForSemanticSegmentation, optionally CAD-wrapped, optionally a
            PeftModel). Its vision encoder must be frozen.
        dtype: Storage dtype: `torch.float16` (default, half the disk and I/O), `torch.bfloat16` or
            `torch.float32` (bit-identical to a fresh encoder pass). Embeddings that overflow float16 are stored in
            float32.
        fsync: Flush each entry to the disk before renaming it into place (survives power loss, slower). Without
            it a crash of the process still never leaves a partial entry, and a damaged file is caught on read.

    Attributes:
        stats: `CacheStats` since creation.
    """

    def __init__(
        self,
        cache_dir: str | os.PathLike,
        model: nn.Module,
        dtype: torch.dtype = torch.float16,
        fsync: bool = False,
    ) -> None:
        if dtype not in _DTYPE_CODES:
            raise ValueError(f"Storage dtype must be one of {list(_DTYPE_CODES)}, got {dtype}.")
        self.cache_dir = Path(cache_dir)
        self.dtype = dtype
        self.fsync = fsync
        self.encoder, self.cad = frozen_vision_encoder(model)
        self.stats = CacheStats()
        self._watch = WeightWatch(self.encoder)
        self.refresh()

    @property
    def directory(self) -> Path:
        """Directory of the current encoder's entries: `<cache_dir>/<fingerprint[:24]>-<dtype>`."""
        return self.cache_dir / f"{self.fingerprint[:24]}-{str(self.dtype).removeprefix('torch.')}"

    def refresh(self) -> None:
        """Re-fingerprint the encoder's weights (automatic after in-place changes, see `WeightWatch`)."""
        self.fingerprint = encoder_fingerprint(self.encoder)
        self._watch.reset()
        self.store = EntryStore(self.directory, fsync=self.fsync)
        info = self.directory / "info.json"
        if not info.exists():
            self.directory.mkdir(parents=True, exist_ok=True)
            temporary = info.with_name(f".info.{os.getpid()}.{uuid.uuid4().hex[:8]}{_TEMPORARY_SUFFIX}")
            description = {
                "format_version": CACHE_FORMAT_VERSION,
                "encoder": type(self.encoder).__qualname__,
                "fingerprint": self.fingerprint,
                "dtype": str(self.dtype),
            }
            temporary.write_text(json.dumps(description, indent=2))
            os.replace(temporary, info)

    def _check_frozen(self) -> None:
        trainable = [name for name, p in self.encoder.named_parameters() if p.requires_grad]
        if trainable:
            raise ValueError(
                f"The vision encoder has trainable parameters (e.g. {trainable[0]!r}): cached outputs would go stale "
                f"as it trains. Freeze it ({_frozen_encoder_methods()}) to use the embedding cache."
            )

    def entry_keys(
        self, pixel_values: torch.Tensor, keys: Sequence[str] | None = None, augmentation: str | Sequence[str] = "none"
    ) -> list[str]:
        """Entry key (SHA-256 hex) of each image: its key (default: hash of its pixel values) and augmentation."""
        batch = pixel_values.shape[0]
        image_keys = [tensor_digest(image) for image in pixel_values] if keys is None else [str(k) for k in keys]
        augmentations = [augmentation] * batch if isinstance(augmentation, str) else [str(a) for a in augmentation]
        if len(image_keys) != batch or len(augmentations) != batch:
            raise ValueError(
                f"Got {len(image_keys)} keys and {len(augmentations)} augmentation ids for {batch} images; give one "
                "per image."
            )
        return [
            hashlib.sha256(f"{image_key}\0{aug}".encode()).hexdigest()
            for image_key, aug in zip(image_keys, augmentations, strict=True)
        ]

    def _read(self, key: str) -> tuple[torch.Tensor, ...] | None:
        try:
            return self.store.read(key)
        except CorruptEntryError as error:
            logger.warning("Embedding cache: %s Deleting it; it will be recomputed.", error)
            self.store.remove(key)
            self.stats.repaired += 1
            return None

    def _encode(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The frozen encoder's output for `pixel_values` (B, 3, H, W), without autograd: its levels, each
        (B, C, h, w) (one for SAM's encoder, the FPN levels for SAM 2's and SAM 3's)."""
        parameter = next(self.encoder.parameters())
        with torch.no_grad():
            outputs = self.encoder(pixel_values.to(parameter.device))
        if isinstance(outputs, tuple):
            return (outputs[0],)
        levels = getattr(outputs, "fpn_hidden_states", None)
        return tuple(levels) if levels is not None else (outputs.last_hidden_state,)

    def _to_storage(self, embedding: torch.Tensor) -> torch.Tensor:
        stored = embedding.to(self.dtype)
        if self.dtype != torch.float32 and not torch.isfinite(stored).all() and torch.isfinite(embedding).all():
            logger.warning("Embedding cache: an embedding overflows %s and is stored in float32.", self.dtype)
            stored = embedding.float()
        return stored.cpu().contiguous()

    def get_or_compute(
        self,
        pixel_values: torch.Tensor,
        keys: Sequence[str] | None = None,
        augmentation: str | Sequence[str] = "none",
    ) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """The frozen encoder's output for each image, read from the cache or computed (and stored) when missing.

        Args:
            pixel_values: `(B, 3, H, W)` the encoder's input, as the model would get it (augmentation applied).
            keys: One key per image identifying its content (e.g. a hash of the image file); default: a hash of
                its `pixel_values`.
            augmentation: The augmentation id (e.g. `"hflip"`), one for the batch or one per image. With the
                default keys the pixel values already tell augmentations apart.

        Returns:
            SAM's image embedding `(B, C, h, w)`; for an encoder that ends in an FPN (SAM 2, SAM 3), its levels as
            it returns them (`fpn_hidden_states`: high to low resolution, each `(B, C, h_i, w_i)`), the mask
            decoder's high-resolution features included. In the encoder's dtype on `pixel_values`' device, as
            stored (rounded to the storage dtype also on the pass that computes them, so every epoch sees the same
            values). Images missing from the cache are encoded together; with float32 storage the result equals a
            fresh encoder pass over the same batch bit for bit.
        """
        self._check_frozen()
        if self._watch.changed():
            self.refresh()
        entry_keys = self.entry_keys(pixel_values, keys, augmentation)
        stored = [self._read(key) for key in entry_keys]
        missing = [index for index, levels in enumerate(stored) if levels is None]
        self.stats.hits += len(entry_keys) - len(missing)
        self.stats.misses += len(missing)
        if missing:
            computed = self._encode(pixel_values[missing])
            for position, index in enumerate(missing):
                stored[index] = tuple(self._to_storage(level[position]) for level in computed)
                self.store.write(entry_keys[index], stored[index])
        if len({len(levels) for levels in stored}) != 1:
            raise CorruptEntryError(
                f"Entries under {self.directory} hold different numbers of levels for one encoder; run "
                "`EmbeddingCache.repair()` or delete the directory."
            )
        output_dtype = next(self.encoder.parameters()).dtype
        levels = tuple(
            torch.stack(level).to(device=pixel_values.device, dtype=output_dtype) for level in zip(*stored, strict=True)
        )
        return levels[0] if len(levels) == 1 else levels

    def image_embeddings(
        self,
        pixel_values: torch.Tensor,
        keys: Sequence[str] | None = None,
        augmentation: str | Sequence[str] = "none",
    ) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """What the model's mask decoder reads: the cached encoder output, plus CAD's adapters when the model has
        them (differentiable through the adapters; on an FPN, added to its last level, the image embedding).
        SAM: pass it as `model(image_embeddings=...)`, (B, C, h, w); SAM 2 / SAM 3: the levels, as
        `get_or_compute` returns them, for `model(encoder_embeddings=...)` of their prompt-free heads.
        """
        embeddings = self.get_or_compute(pixel_values, keys, augmentation)
        if self.cad is None:
            return embeddings
        if isinstance(embeddings, tuple):
            return (*embeddings[:-1], self.cad.add_adapter_outputs(embeddings[-1], pixel_values))
        return self.cad.add_adapter_outputs(embeddings, pixel_values)

    def model_inputs(
        self,
        pixel_values: torch.Tensor,
        keys: Sequence[str] | None = None,
        augmentation: str | Sequence[str] = "none",
    ) -> dict[str, torch.Tensor | tuple[torch.Tensor, ...]]:
        """Keyword arguments that replace `pixel_values=` in the model's forward, with the encoder output cached.

        Decoder-only: `{"image_embeddings"}` on SAM, `{"encoder_embeddings"}` (the FPN levels) on the prompt-free
        heads of SAM 2 / SAM 3. CAD: `{"pixel_values", "encoder_embeddings"}`, so the adapter runs inside the
        model's forward (under DDP, inside the wrapped module).
        """
        embeddings = self.get_or_compute(pixel_values, keys, augmentation)
        if self.cad is not None:
            return {"pixel_values": pixel_values, "encoder_embeddings": embeddings}
        if isinstance(embeddings, tuple):
            return {"encoder_embeddings": embeddings}
        return {"image_embeddings": embeddings}

    def fill(
        self,
        batches: Iterable[torch.Tensor | Mapping],
        augmentation: str | Sequence[str] = "none",
        total: int | None = None,
        progress: bool = True,
    ) -> CacheStats:
        """Compute and store every missing entry of `batches`, with a progress bar; returns this fill's counts.

        Each batch is a `pixel_values` tensor (B, 3, H, W) or a mapping with `"pixel_values"` and optionally
        `"cache_keys"` (one key per image) and `"augmentation"` (ids); `augmentation` applies otherwise. `total`
        is the number of batches, for the bar (default: `len(batches)` when defined).
        """
        before = CacheStats(**asdict(self.stats))
        if total is None and hasattr(batches, "__len__"):
            total = len(batches)
        for batch in tqdm(batches, total=total, disable=not progress, desc="Caching image embeddings", unit="batch"):
            if isinstance(batch, Mapping):
                self.get_or_compute(
                    batch["pixel_values"], batch.get("cache_keys"), batch.get("augmentation", augmentation)
                )
            else:
                self.get_or_compute(batch, None, augmentation)
        return CacheStats(**{k: v - getattr(before, k) for k, v in asdict(self.stats).items()})

    def repair(self) -> int:
        """Check every entry of the current encoder; delete damaged ones and leftover temporary files.

        Returns how many files were deleted. Damaged entries are also caught (and recomputed) when read, so this
        is optional; do not run it while another process writes to the same cache.
        """
        removed = self.store.remove_temporary_files()
        for key in self.store.entry_keys():
            if self._read(key) is None:
                removed += 1
        return removed

    def prune(self) -> int:
        """Delete the entries of every other encoder fingerprint or storage dtype under `cache_dir`; returns how
        many directories were removed."""
        stale = [p for p in self.cache_dir.iterdir() if p.is_dir() and p != self.directory]
        for directory in stale:
            shutil.rmtree(directory)
        return len(stale)

    def __len__(self) -> int:
        return len(self.store.entry_keys())

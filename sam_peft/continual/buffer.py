"""SAMCL's replay buffer: one pooled intermediate feature vector per stored image, instead of the image.

The module selector tells domains apart from the output of one early ViT block of the frozen, un-adapted SAM
image encoder (block 6 of ViT-B in SAMCL), averaged over height and width: one `hidden_size`-vector per image.
The buffer keeps that vector for the first `entries_per_domain` training images of each domain (300 in SAMCL),
so the selector can be retrained on every domain seen so far without keeping any image. In float32 a ViT-B entry
takes 768 x 4 = 3,072 bytes against 786,432 for a 512 x 512 RGB image: 256 times less.

```python
buffer = EmbeddingBuffer.for_encoder(sam.vision_encoder, block_index=6)
buffer.add_domain_images("kvasir", sam.vision_encoder, loader)  # or buffer.add_domain("kvasir", features)
buffer.save("continual/")
```

The blocks up to the feature block are shared by every domain's module (SAMCL adapts later blocks only), so a
routing model runs them once: `sam_peft.modeling.encoder_split.encoder_prefix` returns both the block's hidden
state, for `encoder_suffix` to finish the encoder with the chosen module, and the pooled vector, for the selector.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from ..modeling.encoder_split import block_features, block_width, check_encoder_block

BASE_DOMAIN = "base"
"""Reserved domain name for images that belong to none of the learned domains (SAMCL uses COCO for the original
SAM domain): the module selector routes them to the base SAM, without a module."""

BUFFER_FILE = "embedding_buffer.safetensors"
BUFFER_FORMAT_VERSION = 1
DEFAULT_BLOCK_INDEX = 6
DEFAULT_ENTRIES_PER_DOMAIN = 300
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class CorruptBufferError(ValueError):
    """A buffer file that cannot be read or whose contents contradict its metadata."""


def image_bytes(height: int = 512, width: int = 512, channels: int = 3) -> int:
    """Bytes of an uint8 image of that size (786,432 for 512 x 512 RGB): what an image replay buffer stores."""
    return height * width * channels


class EmbeddingBuffer:
    """Pooled block features of the first `entries_per_domain` training images of each domain, with domain ids.

    Entries are kept grouped by domain in the order the domains were added, so a domain id costs no storage:
    `labels` is rebuilt from the per-domain counts. `BASE_DOMAIN` is a reserved name for images from none of the
    learned domains (the selector's "no module" class).

    Args:
        feature_dim: Width C of each vector (the feature block's width: the encoder's `hidden_size`, 768 for
            ViT-B; on SAM 2's Hiera, the width of the block's stage).
        entries_per_domain: N_e, the most entries kept per domain (SAMCL: 300); a domain with fewer images keeps
            them all.
        block_index: Encoder block (0-based) the features come from (SAMCL: 6); recorded, and used by
            `add_domain_images`.
        dtype: Storage dtype of the vectors: float32 (default), float16 or bfloat16.
    """

    def __init__(
        self,
        feature_dim: int,
        entries_per_domain: int = DEFAULT_ENTRIES_PER_DOMAIN,
        block_index: int = DEFAULT_BLOCK_INDEX,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        if feature_dim < 1 or entries_per_domain < 1 or block_index < 0:
            raise ValueError(
                "feature_dim and entries_per_domain must be positive and block_index non-negative, got "
                f"{feature_dim}, {entries_per_domain} and {block_index}."
            )
        if dtype not in _DTYPES.values():
            raise ValueError(f"Storage dtype must be one of {list(_DTYPES.values())}, got {dtype}.")
        self.feature_dim = feature_dim
        self.entries_per_domain = entries_per_domain
        self.block_index = block_index
        self.dtype = dtype
        self._domains: list[str] = []
        self._chunks: list[torch.Tensor] = []

    @classmethod
    def for_encoder(
        cls,
        vision_encoder: nn.Module,
        block_index: int = DEFAULT_BLOCK_INDEX,
        entries_per_domain: int = DEFAULT_ENTRIES_PER_DOMAIN,
        dtype: torch.dtype = torch.float32,
    ) -> EmbeddingBuffer:
        """An empty buffer for the features of block `block_index` of `vision_encoder` (a SAM vision encoder of any
        generation): as wide as that block's output (`block_width`)."""
        return cls(block_width(vision_encoder, block_index), entries_per_domain, block_index, dtype)

    @property
    def domains(self) -> list[str]:
        """Domain names in the order they were added; a domain's id is its index here."""
        return list(self._domains)

    @property
    def learned_domains(self) -> list[str]:
        """`domains` without `BASE_DOMAIN`."""
        return [name for name in self._domains if name != BASE_DOMAIN]

    @property
    def has_base_domain(self) -> bool:
        return BASE_DOMAIN in self._domains

    def __len__(self) -> int:
        return sum(len(chunk) for chunk in self._chunks)

    def __contains__(self, name: object) -> bool:
        return name in self._domains

    def domain_lengths(self) -> dict[str, int]:
        """Number of entries of each domain."""
        return {name: len(chunk) for name, chunk in zip(self._domains, self._chunks, strict=True)}

    @property
    def features(self) -> torch.Tensor:
        """All vectors, grouped by domain: (N, C) in the storage dtype."""
        if not self._chunks:
            return torch.empty(0, self.feature_dim, dtype=self.dtype)
        return torch.cat(self._chunks)

    @property
    def labels(self) -> torch.Tensor:
        """Domain id of each vector (index into `domains`): (N,) int64."""
        counts = torch.tensor([len(chunk) for chunk in self._chunks], dtype=torch.long)
        return torch.repeat_interleave(torch.arange(len(counts)), counts)

    @property
    def bytes_per_entry(self) -> int:
        """Storage of one entry: the vector (C x dtype size; 3,072 for ViT-B in float32). The domain id is free."""
        return self.feature_dim * self.dtype.itemsize

    @property
    def nbytes(self) -> int:
        """Storage of all entries."""
        return len(self) * self.bytes_per_entry

    def compression_ratio(self, height: int = 512, width: int = 512, channels: int = 3) -> float:
        """How many times smaller an entry is than the uint8 image it replaces (256 for ViT-B float32, 512 px RGB)."""
        return image_bytes(height, width, channels) / self.bytes_per_entry

    def add_domain(self, name: str, features: torch.Tensor) -> int:
        """Store the vectors of a new domain, keeping the first `entries_per_domain`.

        Args:
            name: Domain name, not yet in the buffer (`BASE_DOMAIN` for images from none of the learned domains).
            features: (n, C) pooled block features, in the order of the domain's training images.

        Returns:
            The number of entries stored, `min(n, entries_per_domain)`.
        """
        if not isinstance(name, str) or not name:
            raise ValueError(f"A domain name must be a non-empty string, got {name!r}.")
        if name in self._domains:
            raise ValueError(f"Domain {name!r} is already in the buffer; each domain is added once.")
        if features.ndim != 2 or features.shape[1] != self.feature_dim:
            raise ValueError(
                f"Features of domain {name!r} must have shape (n, {self.feature_dim}), got {tuple(features.shape)}."
            )
        if len(features) == 0:
            raise ValueError(f"Domain {name!r} has no features.")
        kept = features[: self.entries_per_domain].detach().to("cpu", self.dtype).clone()
        if not torch.isfinite(kept).all():
            raise ValueError(f"Features of domain {name!r} hold NaN or infinite values.")
        self._domains.append(name)
        self._chunks.append(kept)
        return len(kept)

    @torch.no_grad()
    def add_domain_images(
        self,
        name: str,
        vision_encoder: nn.Module,
        batches: Iterable[torch.Tensor | Mapping[str, torch.Tensor]],
    ) -> int:
        """Compute and store the features of a domain's first `entries_per_domain` images.

        Args:
            name: Domain name, as in `add_domain`.
            vision_encoder: The frozen, un-adapted SAM vision encoder (block `block_index` must not be adapted).
            batches: Training batches in order: (B, 3, H, W) `pixel_values` tensors or mappings holding
                "pixel_values". Reading stops once enough images were seen.

        Returns:
            The number of entries stored.
        """
        check_encoder_block(vision_encoder, self.block_index)
        if name in self._domains:
            raise ValueError(f"Domain {name!r} is already in the buffer; each domain is added once.")
        device = next(vision_encoder.parameters()).device
        collected, count = [], 0
        for batch in batches:
            pixel_values = batch["pixel_values"] if isinstance(batch, Mapping) else batch
            pixel_values = pixel_values[: self.entries_per_domain - count].to(device)
            collected.append(block_features(vision_encoder, pixel_values, self.block_index).float().cpu())
            count += len(pixel_values)
            if count >= self.entries_per_domain:
                break
        if not collected:
            raise ValueError(f"No images were given for domain {name!r}.")
        return self.add_domain(name, torch.cat(collected))

    def save(self, directory: str | os.PathLike) -> Path:
        """Write the buffer to `directory/embedding_buffer.safetensors` (tensors plus metadata); returns the path."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / BUFFER_FILE
        counts = torch.tensor([len(chunk) for chunk in self._chunks], dtype=torch.long)
        metadata = {
            "format_version": str(BUFFER_FORMAT_VERSION),
            "domains": json.dumps(self._domains),
            "feature_dim": str(self.feature_dim),
            "entries_per_domain": str(self.entries_per_domain),
            "block_index": str(self.block_index),
            "dtype": str(self.dtype).removeprefix("torch."),
        }
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            save_file({"features": self.features.contiguous(), "counts": counts}, temporary, metadata=metadata)
            os.replace(temporary, path)
        finally:
            temporary.unlink(missing_ok=True)
        return path

    @classmethod
    def load(cls, directory: str | os.PathLike) -> EmbeddingBuffer:
        """Read a buffer written by `save` from `directory`.

        Raises:
            FileNotFoundError: when `directory` holds no buffer file.
            CorruptBufferError: when the file cannot be parsed or its tensors contradict its metadata.
        """
        path = Path(directory) / BUFFER_FILE
        if not path.is_file():
            raise FileNotFoundError(f"No embedding buffer at {path}.")
        try:
            with safe_open(path, framework="pt") as file:
                metadata = file.metadata() or {}
            tensors = load_file(path)
        except (SafetensorError, OSError, ValueError) as error:
            raise CorruptBufferError(f"{path} is not a readable safetensors file: {error}") from error
        try:
            version = int(metadata["format_version"])
            domains = json.loads(metadata["domains"])
            buffer = cls(
                int(metadata["feature_dim"]),
                int(metadata["entries_per_domain"]),
                int(metadata["block_index"]),
                _DTYPES[metadata["dtype"]],
            )
            features, counts = tensors["features"], tensors["counts"]
        except (KeyError, ValueError, TypeError) as error:
            raise CorruptBufferError(f"{path} lacks or has invalid buffer metadata ({error!r}).") from error
        if version != BUFFER_FORMAT_VERSION:
            raise CorruptBufferError(
                f"{path} has format version {version}; this version reads {BUFFER_FORMAT_VERSION}."
            )
        consistent = (
            isinstance(domains, list)
            and counts.ndim == 1
            and len(counts) == len(domains)
            and features.shape == (int(counts.sum()), buffer.feature_dim)
            and features.dtype == buffer.dtype
        )
        if not consistent:
            raise CorruptBufferError(
                f"{path}: features {tuple(features.shape)} {features.dtype} and counts {counts.tolist()} do not match "
                f"its {len(domains) if isinstance(domains, list) else '?'} domains of width {buffer.feature_dim}."
            )
        for name, chunk in zip(domains, torch.split(features, counts.tolist()), strict=True):
            buffer.add_domain(name, chunk)
        return buffer

    def __repr__(self) -> str:
        lengths = ", ".join(f"{name}: {count}" for name, count in self.domain_lengths().items())
        return (
            f"EmbeddingBuffer(block {self.block_index}, {self.feature_dim}-d {str(self.dtype).removeprefix('torch.')}, "
            f"{{{lengths}}})"
        )

"""SAMCL's module selector: an MLP that tells from an image's pooled block features which domain module to apply.

Class 0 means "none of the learned domains": the image goes to the base SAM, without a module. Class `i >= 1` is
the i-th learned domain, in the order the domains were learned. The selector is retrained on the whole
`EmbeddingBuffer` after each new domain; when the buffer holds new domains, the output layer grows by one row
per domain and keeps the rows it had.

The "none" class learns from the buffer's `BASE_DOMAIN` entries: pooled features of images from the original
SAM domain (SAMCL uses COCO). Without them the class sees no training example and the selector practically always
picks one of the learned domains.

```python
selector = ModuleSelector(feature_dim=768)
selector.fit(buffer)  # 25 epochs of SGD, lr 0.01, batch 24, on every domain of the buffer
names = selector.predict_domains(block_features(sam.vision_encoder, pixel_values, 6))  # None: base SAM
selector.save("continual/")
```
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn import functional as F

from .buffer import BASE_DOMAIN, EmbeddingBuffer

BASE_CLASS = 0
SELECTOR_WEIGHTS_FILE = "module_selector.safetensors"
SELECTOR_CONFIG_FILE = "module_selector.json"
SELECTOR_FORMAT_VERSION = 1


class ModuleSelector(nn.Module):
    """`Linear(C, C) + BN -> Linear(C, C/4) + BN + ReLU -> Linear(C/4, C/4) + BN + ReLU -> Linear(C/4, T)`.

    T = number of learned domains + 1; class `BASE_CLASS` (0) routes to the base SAM.

    Args:
        feature_dim: Width C of the input features (768 for ViT-B).
        domains: Learned domains already known, in order (class i + 1 is `domains[i]`).
        seed: Seed of the weight initialisation (also of the rows added for new domains, and `fit`'s default).
    """

    def __init__(self, feature_dim: int, domains: Sequence[str] = (), seed: int = 0) -> None:
        super().__init__()
        if feature_dim < 4:
            raise ValueError(
                f"feature_dim must be at least 4 (the hidden width is feature_dim // 4), got {feature_dim}."
            )
        self.feature_dim = feature_dim
        self.hidden_dim = feature_dim // 4
        self.seed = seed
        self.domains: list[str] = []
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.trunk = nn.Sequential(
                nn.Linear(feature_dim, feature_dim),
                nn.BatchNorm1d(feature_dim),
                nn.Linear(feature_dim, self.hidden_dim),
                nn.BatchNorm1d(self.hidden_dim),
                nn.ReLU(),
                nn.Linear(self.hidden_dim, self.hidden_dim),
                nn.BatchNorm1d(self.hidden_dim),
                nn.ReLU(),
            )
            self.head = nn.Linear(self.hidden_dim, 1)
        self.add_domains(domains)

    @property
    def classes(self) -> list[str]:
        """Name of each output class: `BASE_DOMAIN`, then the learned domains."""
        return [BASE_DOMAIN, *self.domains]

    @property
    def num_classes(self) -> int:
        return len(self.domains) + 1

    def add_domains(self, names: Sequence[str]) -> None:
        """Append learned domains: one new output row each (freshly initialised), the existing rows kept."""
        names = list(names)
        invalid = [n for n in names if not isinstance(n, str) or not n or n == BASE_DOMAIN or n in self.domains]
        if invalid or len(set(names)) != len(names):
            raise ValueError(
                f"Cannot add domains {names}: names must be new, unique, non-empty and not the reserved "
                f"{BASE_DOMAIN!r} (the selector knows {self.domains})."
            )
        if not names:
            return
        old = self.head
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed + self.num_classes + len(names))
            head = nn.Linear(self.hidden_dim, self.num_classes + len(names))
        head = head.to(device=old.weight.device, dtype=old.weight.dtype)
        with torch.no_grad():
            head.weight[: old.out_features] = old.weight
            head.bias[: old.out_features] = old.bias
        self.head = head
        self.domains.extend(names)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Logits of each class: (B, C) -> (B, T)."""
        return self.head(self.trunk(features))

    def _class_targets(self, buffer: EmbeddingBuffer) -> tuple[torch.Tensor, torch.Tensor]:
        """The buffer's features (N, C) float32 and their classes (N,) int64, after adding its new domains."""
        if buffer.feature_dim != self.feature_dim:
            raise ValueError(
                f"The buffer holds {buffer.feature_dim}-d features; this selector takes {self.feature_dim}."
            )
        learned = buffer.learned_domains
        if learned[: len(self.domains)] != self.domains:
            raise ValueError(
                f"The buffer's learned domains {learned} must begin with the selector's domains {self.domains}, in "
                "order: a class keeps its index once learned."
            )
        if len(buffer) < 2:
            raise ValueError(f"The buffer holds {len(buffer)} entries; training the selector needs at least 2.")
        self.add_domains(learned[len(self.domains) :])
        class_of_domain = torch.tensor([self.classes.index(name) for name in buffer.domains], dtype=torch.long)
        return buffer.features.float(), class_of_domain[buffer.labels]

    def fit(
        self,
        buffer: EmbeddingBuffer,
        epochs: int = 25,
        lr: float = 0.01,
        batch_size: int = 24,
        momentum: float = 0.0,
        seed: int | None = None,
    ) -> list[float]:
        """Train on every entry of `buffer` with SGD and cross-entropy, continuing from the current weights.

        Domains of the buffer that the selector does not know yet are added first (their order in the buffer is
        their class order). Each epoch shuffles the entries and drops the last, incomplete batch, so BatchNorm
        never sees a batch of one; the batch is `min(batch_size, len(buffer))`. The defaults are SAMCL's: 25
        epochs, lr 0.01, batch 24, plain SGD (no momentum, no weight decay). Leaves the selector in eval mode.

        Args:
            buffer: The replay buffer; needs at least 2 entries.
            seed: Seed of the shuffling (default: the selector's `seed`).

        Returns:
            Mean training loss of each epoch.
        """
        if epochs < 1 or batch_size < 2 or lr <= 0:
            raise ValueError(f"Need epochs >= 1, batch_size >= 2 and lr > 0, got {epochs}, {batch_size} and {lr}.")
        features, targets = self._class_targets(buffer)
        device = self.head.weight.device
        features, targets = features.to(device), targets.to(device)
        batch = min(batch_size, len(features))
        generator = torch.Generator().manual_seed(self.seed if seed is None else seed)
        optimizer = torch.optim.SGD(self.parameters(), lr=lr, momentum=momentum)
        self.train()
        losses = []
        for _ in range(epochs):
            order = torch.randperm(len(features), generator=generator).to(device)
            total, steps = 0.0, 0
            for start in range(0, len(order) - batch + 1, batch):
                indices = order[start : start + batch]
                loss = F.cross_entropy(self(features[indices]), targets[indices])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                total += loss.item()
                steps += 1
            losses.append(total / steps)
        self.eval()
        return losses

    @torch.no_grad()
    def predict(self, features: torch.Tensor) -> torch.Tensor:
        """Class index of each image, `BASE_CLASS` (0) for the base SAM: (B, C) -> (B,) int64. Runs in eval mode."""
        if features.ndim != 2 or features.shape[1] != self.feature_dim:
            raise ValueError(f"Expected features of shape (B, {self.feature_dim}), got {tuple(features.shape)}.")
        was_training = self.training
        self.eval()
        try:
            weight = self.head.weight
            return self(features.to(weight.device, weight.dtype)).argmax(dim=1)
        finally:
            self.train(was_training)

    def predict_domains(self, features: torch.Tensor) -> list[str | None]:
        """Domain of each image, `None` where the selector picks the base SAM (no module): (B, C) -> B names."""
        return [None if index == BASE_CLASS else self.domains[index - 1] for index in self.predict(features).tolist()]

    def save(self, directory: str | os.PathLike) -> Path:
        """Write `module_selector.safetensors` (weights, BatchNorm statistics) and `module_selector.json` (config)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {name: tensor.detach().cpu().contiguous() for name, tensor in self.state_dict().items()}
        save_file(state, directory / SELECTOR_WEIGHTS_FILE, metadata={"format": "pt"})
        config = {
            "format_version": SELECTOR_FORMAT_VERSION,
            "feature_dim": self.feature_dim,
            "domains": self.domains,
            "base_class": BASE_CLASS,
            "base_domain": BASE_DOMAIN,
            "seed": self.seed,
        }
        (directory / SELECTOR_CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
        return directory

    @classmethod
    def load(cls, directory: str | os.PathLike, device: str | torch.device = "cpu") -> ModuleSelector:
        """Read a selector written by `save`, in eval mode.

        Raises:
            FileNotFoundError: when a file is missing.
            ValueError: when a file cannot be parsed or the weights do not fit the config.
        """
        directory = Path(directory)
        config_path, weights_path = directory / SELECTOR_CONFIG_FILE, directory / SELECTOR_WEIGHTS_FILE
        for path in (config_path, weights_path):
            if not path.is_file():
                raise FileNotFoundError(f"No module selector file at {path}.")
        try:
            config = json.loads(config_path.read_text())
            version, feature_dim, domains = config["format_version"], config["feature_dim"], config["domains"]
            seed = config.get("seed", 0)
        except (ValueError, KeyError, TypeError) as error:
            raise ValueError(f"{config_path} is not a valid module selector config ({error!r}).") from error
        if version != SELECTOR_FORMAT_VERSION:
            raise ValueError(
                f"{config_path} has format version {version}; this version reads {SELECTOR_FORMAT_VERSION}."
            )
        try:
            state = load_file(weights_path, device=str(device))
        except (SafetensorError, OSError) as error:
            raise ValueError(f"{weights_path} is not a readable safetensors file: {error}") from error
        selector = cls(feature_dim, domains, seed=seed).to(device)
        try:
            selector.load_state_dict(state)
        except RuntimeError as error:
            raise ValueError(f"{weights_path} does not fit a {feature_dim}-d selector of {domains}: {error}") from error
        return selector.eval()

    def extra_repr(self) -> str:
        return f"classes={self.classes}"

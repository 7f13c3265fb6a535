"""`ContinualSam`: one frozen SAM, one SLoRA module per learned domain, and a selector that routes each image.

Any generation of prompted SAM is a base: `SamModel` (SAM), `Sam2Model` (SAM 2 / 2.1, Hiera) or `Sam3TrackerModel`
(SAM 3's tracker); the modules adapt the blocks SLoRA adapts by default on it (the last five; on Hiera those of the
image-embedding stage) and the selector reads the block before them.

SAMCL in PEFT terms: every domain is a named adapter on one `PeftModel`; the replay buffer holds one pooled
early-block feature vector per stored image; the module selector (an MLP on those vectors) picks the adapter of
each image, or none (the base SAM) for images of no learned domain.

```python
continual = ContinualSam(SamModel.from_pretrained("facebook/sam-vit-base"), base_model="facebook/sam-vit-base")
continual.learn_domain("kvasir", prepare_for_sam(kvasir["train"]))  # train a module, extend the buffer, refit
continual.learn_domain("camo", prepare_for_sam(camo["train"]))
outputs = continual(pixel_values, input_points=points, input_labels=labels)  # routed per image
continual.save_pretrained("samcl/")  # adapters, buffer, selector, continual_config.json
continual = ContinualSam.from_pretrained("samcl/")  # or a Hub repository id
```

Routing shares work: the encoder blocks up to the feature block are not adapted, so they run once per image and
serve both the selector (pooled features) and the chosen module (which continues from that hidden state).
"""

from __future__ import annotations

import copy
import json
import os
import tempfile
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from huggingface_hub import HfApi
from peft import PeftModel, get_peft_model
from torch import Tensor, nn
from torch.utils.data import DataLoader
from transformers import AutoModel, PreTrainedModel, Sam2Model, Sam3TrackerModel, SamModel
from transformers.utils import ModelOutput

from ..data import sam_collate_fn
from ..modeling.encoder_split import block_width, encoder_prefix, encoder_suffix
from ..modeling.semantic_sam2 import fpn_decoder_embeddings
from ..tuners.slora import SloraConfig
from ..tuners.slora.encoders import encoder_layout
from .buffer import BASE_DOMAIN, DEFAULT_ENTRIES_PER_DOMAIN, EmbeddingBuffer
from .prompting import DomainTrainingArguments, train_module
from .selector import ModuleSelector

CONTINUAL_CONFIG_FILE = "continual_config.json"
CONTINUAL_FORMAT_VERSION = 1
# the prompted SAM models a continual model is built on, one per generation
SUPPORTED_BASES: tuple[type[PreTrainedModel], ...] = (SamModel, Sam2Model, Sam3TrackerModel)
# the vision-encoder settings a saved continual model must share with the base it is loaded onto: SAM's vision config
_BASE_SIGNATURE_KEYS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "output_channels", "image_size")
# SAM 2's and SAM 3's: their backbone config's (besides the model type and the FPN width)
_BACKBONE_SIGNATURE_KEYS = {
    "sam2": ("embed_dim_per_stage", "blocks_per_stage", "num_attention_heads_per_stage", "image_size"),
    "sam3_tracker": ("hidden_size", "num_hidden_layers", "num_attention_heads", "patch_size", "image_size"),
}


@dataclass
class ContinualSamOutput(ModelOutput):
    """Output of `ContinualSam.forward`.

    Args:
        pred_masks: `(B, point_batch, num_masks, h, w)` low-resolution mask logits, as the base model returns them.
        iou_scores: `(B, point_batch, num_masks)` SAM's predicted IoU of each mask.
        domains: The module each image was routed to (`None`: the base SAM).
        object_score_logits: `(B, point_batch, 1)` SAM 2's and SAM 3's logit that the object is in the image;
            `None` on SAM.
    """

    pred_masks: Tensor | None = None
    iou_scores: Tensor | None = None
    domains: list[str | None] | None = None
    object_score_logits: Tensor | None = None


def base_signature(sam: PreTrainedModel) -> dict[str, Any]:
    """The vision-encoder settings that decide whether saved modules and features fit a base SAM.

    SAM: its vision config's `hidden_size`, `num_hidden_layers`, `num_attention_heads`, `output_channels` and
    `image_size`. SAM 2 / SAM 3's tracker: the `model_type`, the backbone's widths, blocks, heads and image size,
    and the FPN width. Values as JSON holds them (lists, not tuples).
    """
    config = sam.config
    vision = config.vision_config
    if config.model_type not in _BACKBONE_SIGNATURE_KEYS:
        signature = {key: getattr(vision, key) for key in _BASE_SIGNATURE_KEYS}
    else:
        backbone = vision.backbone_config
        signature = {
            "model_type": config.model_type,
            **{key: getattr(backbone, key) for key in _BACKBONE_SIGNATURE_KEYS[config.model_type]},
            "fpn_hidden_size": vision.fpn_hidden_size,
        }
    return json.loads(json.dumps(signature))


def default_module_blocks(sam: PreTrainedModel) -> list[int]:
    """The blocks a domain's module adapts when its `layers_to_transform` is unset: SLoRA's default on `sam`'s
    encoder (the last five blocks; on SAM 2's Hiera the last five adaptable blocks of the image-embedding stage)
    without block 0, so that the selector reads an earlier block (ViT-B: 7..11; Hiera-T: 5..9)."""
    return [block for block in encoder_layout(sam.vision_encoder).default_blocks() if block >= 1]


class ContinualSam(nn.Module):
    """A SAM that learns domain after domain without forgetting: one SLoRA module per domain, routed per image.

    Args:
        sam: The base prompted SAM (`SamModel`, `Sam2Model` or `Sam3TrackerModel`); it is frozen (its mask decoder
            too) and wrapped in place by the first domain.
        module_config: The `SloraConfig` every domain's module is built from (default: `SloraConfig()`, the paper's
            rank 10 on ViT-B blocks 7..11; on other encoders `default_module_blocks`). Its adapted blocks must all
            come after `feature_block`.
        feature_block: The encoder block whose pooled output the selector reads (default: the block before the
            first adapted one: 6 on ViT-B, 4 on Hiera-T). Its width (on Hiera, its stage's) is the buffer's.
        entries_per_domain: Buffer entries (training images) kept per domain (SAMCL: 300).
        selector_epochs, selector_lr, selector_batch_size: How the selector is refitted after each domain
            (SAMCL: 25 epochs of SGD at 0.01, batches of 24).
        base_model: Hub id or folder of `sam`, recorded so that `from_pretrained` can rebuild it.
        seed: Seed of the selector's initialisation and training.
    """

    def __init__(
        self,
        sam: PreTrainedModel,
        module_config: SloraConfig | None = None,
        *,
        feature_block: int | None = None,
        entries_per_domain: int = DEFAULT_ENTRIES_PER_DOMAIN,
        selector_epochs: int = 25,
        selector_lr: float = 0.01,
        selector_batch_size: int = 24,
        base_model: str | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if not isinstance(sam, SUPPORTED_BASES):
            names = ", ".join(cls.__name__ for cls in SUPPORTED_BASES)
            raise TypeError(
                f"ContinualSam wraps a transformers SamModel (a prompted SAM of any generation: {names}); got "
                f"{type(sam).__name__}."
            )
        self.module_config = module_config if module_config is not None else SloraConfig()
        self.adapted_blocks = self._adapted_blocks(sam, self.module_config)
        if feature_block is None:
            feature_block = self.adapted_blocks[0] - 1
        if not 0 <= feature_block < self.adapted_blocks[0]:
            raise ValueError(
                f"feature_block must come before the first adapted block ({self.adapted_blocks[0]}): the blocks up to "
                f"it are shared by the selector and every module; got {feature_block}."
            )
        self.feature_block = feature_block
        self.selector_epochs, self.selector_lr, self.selector_batch_size = (
            selector_epochs,
            selector_lr,
            selector_batch_size,
        )
        self.base_model, self.seed = base_model, seed
        self.sam = sam.requires_grad_(False).eval()
        self.peft_model: PeftModel | None = None
        width = block_width(sam.vision_encoder, feature_block)
        self.buffer = EmbeddingBuffer(width, entries_per_domain=entries_per_domain, block_index=feature_block)
        self.selector = ModuleSelector(width, seed=seed)

    @staticmethod
    def _adapted_blocks(sam: PreTrainedModel, config: SloraConfig) -> list[int]:
        layout = encoder_layout(sam.vision_encoder)
        num_blocks = len(layout.blocks)
        layers = config.layers_to_transform
        if layers is None:  # SLoRA's default, after block 0: the selector reads a block before the first adapted one
            layers = default_module_blocks(sam)
        blocks = sorted([layers] if isinstance(layers, int) else layers)
        if not blocks or blocks[0] < 1 or blocks[-1] >= num_blocks:
            raise ValueError(f"Adapted blocks {blocks} must lie in [1, {num_blocks - 1}] for this encoder.")
        layout.check_blocks(blocks)  # e.g. Hiera: blocks of one stage, none that widens the tokens
        return blocks

    @property
    def domains(self) -> list[str]:
        """The learned domains, in the order they were learned."""
        return list(self.selector.domains)

    @property
    def vision_encoder(self) -> nn.Module:
        """The SAM vision encoder, with the modules' layers once a domain is learned."""
        return self.sam.vision_encoder

    def decoder_image_embeddings(self, encoder_output: Tensor | tuple[Tensor, ...]) -> Tensor | list[Tensor]:
        """The vision encoder's output (`encoder_suffix`'s) as the base model's forward takes it as
        `image_embeddings`: SAM's `(B, C, h, w)` as it is; SAM 2's and SAM 3's FPN levels through the decoder's
        `conv_s0` / `conv_s1` and the no-memory embedding (`fpn_decoder_embeddings`)."""
        if isinstance(encoder_output, Tensor):
            return encoder_output
        return fpn_decoder_embeddings(self.sam, encoder_output)

    def _check_new_domain(self, name: str) -> None:
        if not isinstance(name, str) or not name or name == BASE_DOMAIN:
            raise ValueError(f"A domain needs a non-empty name other than the reserved {BASE_DOMAIN!r}; got {name!r}.")
        if name in self.buffer.domains:
            raise ValueError(f"Domain {name!r} is already learned ({self.domains}); give each domain its own name.")

    def add_module(self, name: str) -> PeftModel:
        """A fresh (identity) module for domain `name`, made the active, trainable adapter."""
        config = copy.deepcopy(self.module_config)
        # unset, SLoRA would adapt its own default, which may include block 0 (a short encoder) or the feature block
        config.layers_to_transform = list(self.adapted_blocks)
        if self.peft_model is None:
            self.peft_model = get_peft_model(self.sam, config, adapter_name=name)
        else:
            self.peft_model.add_adapter(name, config)
        self.peft_model.set_adapter(name)
        return self.peft_model

    def _feature_batches(self, dataset, batch_size: int):
        loader = DataLoader(dataset, batch_size=batch_size, collate_fn=lambda e: sam_collate_fn(e, ["pixel_values"]))
        device = next(self.sam.parameters()).device
        for batch in loader:
            yield batch["pixel_values"].to(device)

    @torch.no_grad()
    def extend_buffer(self, name: str, dataset, batch_size: int = 8) -> int:
        """Store the features of the first `entries_per_domain` images of `dataset` (prepared SAM inputs) under
        `name`; `BASE_DOMAIN` adds examples of "no learned domain" (e.g. COCO) for the selector. Returns the count."""
        return self.buffer.add_domain_images(name, self.vision_encoder, self._feature_batches(dataset, batch_size))

    def fit_selector(self) -> list[float]:
        """Refit the selector on the whole buffer (its classes grow with the buffer's domains); returns the losses."""
        losses = self.selector.fit(
            self.buffer,
            epochs=self.selector_epochs,
            lr=self.selector_lr,
            batch_size=self.selector_batch_size,
            seed=self.seed + len(self.domains),
        )
        self.selector.eval()
        return losses

    def learn_domain(
        self,
        name: str,
        train_dataset,
        args: DomainTrainingArguments | None = None,
        progress: bool = True,
        accelerator: Accelerator | None = None,
    ) -> list[float]:
        """Learn domain `name` from `train_dataset` (prepared SAM inputs with an `id` column, e.g.
        `prepare_for_sam(split, augmentation=None)`): train a new module with point prompts (`train_module`, on
        `accelerator`: mixed precision, several processes, its trackers under `{name}/train/`), store the domain's
        buffer entries and refit the selector. Earlier modules are left untouched. Returns the training losses.
        """
        self._check_new_domain(name)
        args = args or DomainTrainingArguments()
        model = self.add_module(name)
        losses = train_module(
            model,
            train_dataset,
            args,
            description=f"training {name}",
            progress=progress,
            accelerator=accelerator,
            log_prefix=f"{name}/train/",
        )
        model.base_model.set_requires_grad(name, False)
        self.extend_buffer(name, train_dataset, args.eval_batch_size)
        self.fit_selector()
        return losses

    @contextmanager
    def use_module(self, domain: str | None):
        """Inside the block, the model runs with `domain`'s module (None: the base SAM, no module)."""
        if domain is None or self.peft_model is None:
            context = self.peft_model.disable_adapter() if self.peft_model is not None else nullcontext()
            with context:
                yield
            return
        if domain not in self.peft_model.peft_config:
            raise ValueError(f"No module for domain {domain!r}; learned: {self.domains}.")
        previous = self.peft_model.active_adapter
        if domain == previous:  # already active: switching walks every module for nothing
            yield
            return
        self.peft_model.base_model.set_adapter(domain, inference_mode=True)
        try:
            yield
        finally:
            self.peft_model.base_model.set_adapter(previous, inference_mode=True)

    @torch.no_grad()
    def route(self, pixel_values: Tensor) -> list[str | None]:
        """The module each image of `pixel_values` (B, 3, S, S) goes to (None: the base SAM)."""
        self._check_learned()
        return self.selector.predict_domains(encoder_prefix(self.vision_encoder, pixel_values, self.feature_block)[1])

    def _check_learned(self) -> None:
        if not self.domains:
            raise RuntimeError("No domain is learned yet: call learn_domain (or from_pretrained) before routing.")

    def image_embeddings(
        self,
        pixel_values: Tensor,
        input_points: Tensor | None = None,
        input_labels: Tensor | None = None,
        domains: list[str | None] | None = None,
    ) -> tuple[Tensor | tuple[Tensor, ...], list[str | None]]:
        """Routed vision-encoder outputs and the module of each image: SAM's image embeddings `(B, C, h, w)`, or
        SAM 2's / SAM 3's FPN levels `(B, C, h_i, w_i)`, high to low resolution (`encoder_suffix`).

        The blocks up to `feature_block` run once for the whole batch; the selector reads their pooled output
        (unless `domains` names the module of each image); each group of images sharing a module continues
        from that hidden state with its module and, with the prompt path, the heat map of its own points.
        """
        self._check_learned()
        prefix = encoder_prefix(self.vision_encoder, pixel_values, self.feature_block)
        if domains is None:
            domains = self.selector.predict_domains(prefix.features)
        elif len(domains) != pixel_values.shape[0]:
            raise ValueError(f"Got {len(domains)} domains for {pixel_values.shape[0]} images.")
        groups = dict.fromkeys(domains)
        embeddings: list[Tensor] | None = None
        for domain in groups:
            if len(groups) == 1:  # one module for the whole batch: no gathering or scattering
                index = slice(None)
            else:
                index = torch.tensor([i for i, d in enumerate(domains) if d == domain], device=pixel_values.device)
            prompts = nullcontext()
            if domain is not None and input_points is not None:
                prompts = self.peft_model.base_model.prompts(
                    input_points[index], None if input_labels is None else input_labels[index]
                )
            images = prefix.select(index)
            with self.use_module(domain), prompts:
                group = encoder_suffix(
                    self.vision_encoder, images.hidden_states, self.feature_block, images.stage_outputs
                )
            if len(groups) == 1:
                return group, domains
            levels = (group,) if isinstance(group, Tensor) else group
            if embeddings is None:
                embeddings = [level.new_empty((len(domains), *level.shape[1:])) for level in levels]
            for gathered, level in zip(embeddings, levels, strict=True):
                gathered[index] = level
        return (embeddings[0] if isinstance(group, Tensor) else tuple(embeddings)), domains

    def forward(
        self,
        pixel_values: Tensor,
        input_points: Tensor | None = None,
        input_labels: Tensor | None = None,
        input_boxes: Tensor | None = None,
        multimask_output: bool = False,
        domains: list[str | None] | None = None,
    ) -> ContinualSamOutput:
        """Segment each image with the module of its domain (see `image_embeddings`); prompts as for the base
        model's forward (`SamModel`'s, `Sam2Model`'s, `Sam3TrackerModel`'s)."""
        encoder_output, domains = self.image_embeddings(pixel_values, input_points, input_labels, domains)
        outputs = self.sam(
            image_embeddings=self.decoder_image_embeddings(encoder_output),
            input_points=input_points,
            input_labels=input_labels,
            input_boxes=input_boxes,
            multimask_output=multimask_output,
        )
        return ContinualSamOutput(
            pred_masks=outputs.pred_masks,
            iou_scores=outputs.iou_scores,
            domains=domains,
            object_score_logits=getattr(outputs, "object_score_logits", None),
        )

    def _continual_config(self) -> dict[str, Any]:
        return {
            "format_version": CONTINUAL_FORMAT_VERSION,
            "base_model": self.base_model,
            "base_signature": base_signature(self.sam),
            "domains": self.domains,
            "feature_block": self.feature_block,
            "entries_per_domain": self.buffer.entries_per_domain,
            "selector": {
                "epochs": self.selector_epochs,
                "lr": self.selector_lr,
                "batch_size": self.selector_batch_size,
            },
            "seed": self.seed,
        }

    def save_pretrained(self, save_directory: str | os.PathLike) -> Path:
        """Write everything into one folder: one adapter subfolder per domain, the buffer, the selector and
        `continual_config.json`."""
        self._check_learned()
        directory = Path(save_directory)
        directory.mkdir(parents=True, exist_ok=True)
        for domain in self.domains:
            self.peft_model.save_pretrained(str(directory / "modules"), selected_adapters=[domain])
        self.buffer.save(directory)
        self.selector.save(directory)
        (directory / CONTINUAL_CONFIG_FILE).write_text(json.dumps(self._continual_config(), indent=2))
        return directory

    def push_to_hub(
        self,
        repo_id: str,
        private: bool = False,
        commit_message: str = "Upload continual SAM",
        api: HfApi | None = None,
    ) -> str:
        """Upload `save_pretrained`'s folder to the Hub model repository `repo_id` (created if needed); returns
        the commit URL."""
        api = api if api is not None else HfApi()
        api.create_repo(repo_id, private=private, exist_ok=True)
        with tempfile.TemporaryDirectory() as folder:
            self.save_pretrained(folder)
            return api.upload_folder(repo_id=repo_id, folder_path=folder, commit_message=commit_message).commit_url

    @classmethod
    def from_pretrained(
        cls, name_or_path: str | os.PathLike, sam: PreTrainedModel | None = None, revision: str | None = None
    ) -> ContinualSam:
        """Load a continual model saved by `save_pretrained` (a folder or a Hub repository id).

        Args:
            name_or_path: The folder, or a Hub repository id.
            sam: The base model; default: the recorded `base_model`, loaded with `AutoModel` (its config's model
                type picks `SamModel`, `Sam2Model` or `Sam3TrackerModel`).

        Raises:
            ValueError: when `sam` is not the kind of base the model was trained on (another size).
        """
        from ..hub import resolve_pretrained

        directory = resolve_pretrained(name_or_path, revision=revision)
        config_path = directory / CONTINUAL_CONFIG_FILE
        if not config_path.is_file():
            raise FileNotFoundError(f"{name_or_path} is not a continual SAM: {CONTINUAL_CONFIG_FILE} is missing.")
        config = json.loads(config_path.read_text())
        if sam is None:
            if not config.get("base_model"):
                raise ValueError(f"{config_path} records no base_model: pass `sam`.")
            sam = AutoModel.from_pretrained(config["base_model"])
        expected, found = config["base_signature"], base_signature(sam)
        if found != expected:
            differences = ", ".join(
                f"{k} {expected.get(k)} != {found.get(k)}"
                for k in {**expected, **found}
                if expected.get(k) != found.get(k)
            )
            raise ValueError(
                f"The continual model in {name_or_path} was trained on a SAM with {expected}; the base model given "
                f"differs ({differences}). Load it onto the same SAM size it was trained on."
            )
        modules = directory / "modules"
        # every module shares one config: the first one's is the template of domains learned later
        module_config = SloraConfig.from_pretrained(str(modules / config["domains"][0]))
        module_config.inference_mode = False
        selector = config["selector"]
        model = cls(
            sam,
            module_config,
            feature_block=config["feature_block"],
            entries_per_domain=config["entries_per_domain"],
            selector_epochs=selector["epochs"],
            selector_lr=selector["lr"],
            selector_batch_size=selector["batch_size"],
            base_model=config.get("base_model"),
            seed=config.get("seed", 0),
        )
        for index, domain in enumerate(config["domains"]):
            if index == 0:
                model.peft_model = PeftModel.from_pretrained(model.sam, str(modules / domain), adapter_name=domain)
            else:
                model.peft_model.load_adapter(str(modules / domain), adapter_name=domain)
        model.buffer = EmbeddingBuffer.load(directory)
        model.selector = ModuleSelector.load(directory)
        if model.selector.domains != config["domains"]:
            raise ValueError(f"The selector in {directory} knows {model.selector.domains}, not {config['domains']}.")
        return model.eval()

"""What every sam-peft tuner shares on top of peft's `BaseTuner`."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any, ClassVar

from peft import PeftConfig
from peft.tuners.tuners_utils import BaseTuner, BaseTunerLayer, check_target_module_exists
from torch import nn

from .targets import default_target_modules, layer_index_allowed

# Called as `hook(config, directory, auto_mapping)` after a sam-peft adapter config is saved into `directory` (by
# `PeftModel.save_pretrained`, once its weights are written there; `auto_mapping` is peft's record of the base model
# class). `sam_peft` registers its model card writer here (`sam_peft.hub.write_card_on_save`), which tuners, below
# the hub layer, do not import.
CONFIG_SAVE_HOOKS: list[Callable[[PeftConfig, str, dict | None], None]] = []


class SamPeftConfigMixin:
    """What every sam-peft tuner config adds to `PeftConfig`: `save_pretrained` runs `CONFIG_SAVE_HOOKS`."""

    def save_pretrained(self, save_directory: str, **kwargs: Any) -> None:
        super().save_pretrained(save_directory, **kwargs)
        for hook in CONFIG_SAVE_HOOKS:
            hook(self, save_directory, kwargs.get("auto_mapping_dict"))


class UnmergeableLayer(BaseTunerLayer):
    """A tuner layer whose adapters are never merged into the base weights (no sam-peft method can be).

    Each method states why once, on its layer class: `method` (its name in messages) and `merge_refusal` (the
    reason). The layer's `merge` and the model's `merge_adapter` / `merge_and_unload` raise the same error.
    """

    method: ClassVar[str] = ""
    merge_refusal: ClassVar[str] = ""

    @classmethod
    def merge_error(cls) -> ValueError:
        """The error every merge of this method raises."""
        return ValueError(
            f"{cls.method} adapters cannot be merged: {cls.merge_refusal} Keep the adapter as it is, or use "
            "`unload()` to remove the adapters and get the original model back."
        )

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        raise self.merge_error()

    def unmerge(self) -> None:
        warnings.warn(f"Nothing to unmerge: {self.method} adapters are never merged.", stacklevel=2)


class SamPeftTuner(BaseTuner):
    """peft's `BaseTuner` with two fixes that SAM models need.

    - `layers_to_transform` also applies to regex `target_modules` (peft honours it for lists only, and
      sam-peft's default targets are regexes).
    - Replacing a module that has no `weight` of its own (the `mask_decoder` in `modules_to_save`, when
      `unload()` puts it back) does not try to copy one: peft's default does, and fails.

    Default targets come from the model's architecture (`model_type`: SAM, SAM-HQ, SAM 2, SAM 3's tracker; the
    tables are in `sam_peft.tuners.targets`); on an architecture a method does not apply to, the error names it
    and says why.

    And one default: a model class may name, in a class attribute `peft_default_modules_to_save`, the modules
    that are its task head, to be trained and saved unless the config says otherwise, the way peft trains the
    classifier of a sequence-classification model. `SamForSemanticSegmentation` names its mask decoder (with its
    class branch); an explicit `modules_to_save` (even `[]`) overrides it. (A class attribute rather than an
    isinstance check: tuners sit below `sam_peft.modeling` and do not import it.)

    No sam-peft method can be merged into the base weights: `merge_adapter` and `merge_and_unload` raise the
    error of the tuner's layer class (an `UnmergeableLayer`), which states why.
    """

    tuner_layer_cls: ClassVar[type[UnmergeableLayer]]
    # default targets by `model_type` (peft's own attribute), and why the method does not apply to other ones
    target_module_mapping: ClassVar[dict[str, str]] = {}
    unsupported_architectures: ClassVar[dict[str, str]] = {}

    def _check_merge_allowed(self) -> None:
        raise self.tuner_layer_cls.merge_error()

    def merge_adapter(self, adapter_names: list[str] | None = None, safe_merge: bool = False) -> None:
        self._check_merge_allowed()

    def _prepare_adapter_config(self, peft_config, model_config: dict):
        if peft_config.target_modules is None:
            peft_config.target_modules = default_target_modules(
                self.tuner_layer_cls.method, self.target_module_mapping, model_config, self.unsupported_architectures
            )
        default = getattr(type(self.model), "peft_default_modules_to_save", None)
        if peft_config.modules_to_save is None and default is not None:
            peft_config.modules_to_save = list(default)
        return peft_config

    @staticmethod
    def _check_target_module_exists(peft_config, key: str):
        matched = check_target_module_exists(peft_config, key)
        if matched and isinstance(peft_config.target_modules, str):
            return layer_index_allowed(peft_config, key)
        return matched

    def _insert(self, parent: nn.Module, child_name: str, new_module: nn.Module, child: nn.Module, adapter_name: str):
        """Put a freshly created tuner layer in place of `child`; an adapter added besides the active one starts
        frozen, as in peft's own tuners."""
        if adapter_name not in self.active_adapters:
            new_module.requires_grad_(False)
        self._replace_module(parent, child_name, new_module, child)

    def _replace_module(self, parent: nn.Module, child_name: str, new_module: nn.Module, child: nn.Module) -> None:
        if hasattr(new_module, "base_layer") or isinstance(getattr(child, "weight", None), nn.Parameter):
            super()._replace_module(parent, child_name, new_module, child)
        else:
            setattr(parent, child_name, new_module)

"""sam-peft: parameter-efficient fine-tuning of Segment Anything as PEFT methods.

Importing this package registers its tuner types with peft, so that `get_peft_model`, `PeftModel.from_pretrained`
and `load_adapter` know them: `import sam_peft` must precede loading a sam-peft adapter.

Layers. Imports inside the package flow one way, down this order (lowest first):

    `tuners` (with `_registration`) < `modeling` < `data`
        < `training`, `continual`, `prediction`, `prompted_prediction`, `hub`, `convert`, `export` < `recipes/`
        (outside the package)

A module imports its own layer (the seven of the fourth import one another freely) and the layers below it, never one
above, not even lazily inside a function: what a lower layer needs from a higher one comes in from above, through
a hook (`tuners.base.CONFIG_SAVE_HOOKS`) or a class attribute (`peft_default_modules_to_save`). A tuner imports no
other tuner's package: what tuners share sits directly under `tuners/` (`base`, `side_layers`, `frequency`, ...).
`metrics` stands apart: it imports no other part of sam_peft, and only the fourth layer uses it. This `__init__`
sits above the whole package. `tests/test_layers.py` checks these rules.
"""

from ._registration import register_all
from .hub import write_card_on_save
from .modeling import (
    Sam2ForSemanticSegmentation,
    Sam3TrackerForSemanticSegmentation,
    SamForSemanticSegmentation,
    SamSemanticSegmentationConfig,
    load_encoder_adapter,
    post_process_semantic_segmentation,
    random_sam,
    sam_config,
)
from .tuners import (
    CadConfig,
    CadModel,
    ConvLoraConfig,
    ConvLoraModel,
    SamAdapterConfig,
    SamAdapterModel,
    SloraConfig,
    SloraModel,
    auxiliary_loss,
)
from .tuners.base import CONFIG_SAVE_HOOKS

__version__ = "0.1.0"

register_all()
if write_card_on_save not in CONFIG_SAVE_HOOKS:
    CONFIG_SAVE_HOOKS.append(write_card_on_save)

__all__ = [
    "CadConfig",
    "CadModel",
    "ConvLoraConfig",
    "ConvLoraModel",
    "Sam2ForSemanticSegmentation",
    "Sam3TrackerForSemanticSegmentation",
    "SamAdapterConfig",
    "SamAdapterModel",
    "SamForSemanticSegmentation",
    "SamSemanticSegmentationConfig",
    "SloraConfig",
    "SloraModel",
    "__version__",
    "auxiliary_loss",
    "load_encoder_adapter",
    "post_process_semantic_segmentation",
    "random_sam",
    "sam_config",
]

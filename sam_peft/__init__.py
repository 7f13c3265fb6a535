"""sam-peft: parameter-efficient fine-tuning of Segment Anything as PEFT methods.

Importing this package registers its tuner types with peft, so that `get_peft_model`, `PeftModel.from_pretrained`
and `load_adapter` know them: `import sam_peft` must precede loading a sam-peft adapter.
"""

from ._registration import register_all
from .modeling import (
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

__version__ = "0.1.0"

register_all()

__all__ = [
    "CadConfig",
    "CadModel",
    "ConvLoraConfig",
    "ConvLoraModel",
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

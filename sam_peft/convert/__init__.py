"""Converters from the authors' checkpoint formats to sam-peft adapters.

| method | authors' checkpoint | sam-peft adapter |
| --- | --- | --- |
| `slora` | SAMCL's module file (`save_lora_parameters`) | `SloraConfig` on a `SamModel` |
| `sam_adapter` | SAM-Adapter's `model_epoch_*.pth` | `SamAdapterConfig` on a `SamModel` (with their decoder) |
| `cad` | CAD's `checkpoints/*.pth` | `CadConfig` on a `SamModel` (with their decoder) |
| `conv_lora` | AutoGluon's Conv-LoRA `model.ckpt` | `ConvLoraConfig` on a `SamForSemanticSegmentation` |

Checkpoints are read with `torch.load(weights_only=True)` (or safetensors): nothing in them runs. Each converter
infers the adapter's hyper-parameters from the tensors' shapes, checks them against the base model, accounts for
every key of the checkpoint (adapter weight, frozen SAM weight compared with the base, or a documented ignore) and
fails with a `ConversionError` naming the file and the problem otherwise. Command line: `python -m sam_peft.convert`.

    >>> from sam_peft.convert import convert_checkpoint
    >>> model = convert_checkpoint("slora", "Kvasir.pth", "facebook/sam-vit-base", output_dir="kvasir-slora")
"""

from .api import CONVERTERS, SOURCES, convert_checkpoint, method_options
from .cad import convert_cad
from .conv_lora import convert_conv_lora
from .errors import ConversionError, ConversionWarning
from .sam_adapter import convert_sam_adapter
from .sam_names import sam_key_to_transformers
from .slora import convert_slora

__all__ = [
    "CONVERTERS",
    "SOURCES",
    "ConversionError",
    "ConversionWarning",
    "convert_cad",
    "convert_checkpoint",
    "convert_conv_lora",
    "convert_sam_adapter",
    "convert_slora",
    "method_options",
    "sam_key_to_transformers",
]

"""sam-peft's PEFT tuners, one folder per method (config, layer, model), as in peft."""

from .auxiliary import AuxiliaryLossSlot, auxiliary_loss
from .cad import CadConfig, CadModel
from .conv_lora import ConvLoraConfig, ConvLoraModel
from .sam_adapter import SamAdapterConfig, SamAdapterModel
from .slora import SloraConfig, SloraModel

__all__ = [
    "AuxiliaryLossSlot",
    "CadConfig",
    "CadModel",
    "ConvLoraConfig",
    "ConvLoraModel",
    "SamAdapterConfig",
    "SamAdapterModel",
    "SloraConfig",
    "SloraModel",
    "auxiliary_loss",
]

"""Recognising which authors' format a checkpoint is in, to say so when it is converted with the wrong method."""

from __future__ import annotations

from collections.abc import Iterable

# One key fragment that only each format's checkpoints hold, and what the format is.
FORMAT_SIGNATURES: dict[str, tuple[str, str]] = {
    "slora": ("extra.upward_", "a SAMCL module file (SLoRA)"),
    "sam_adapter": ("image_encoder.prompt_generator.shared_mlp.", "a SAM-Adapter model checkpoint"),
    "cad": ("conv_adapter.conv_up.", "a CAD model checkpoint"),
    "conv_lora": (".attn.qkv.lora_moe_gating.", "an AutoGluon Conv-LoRA checkpoint"),
}


def detect_format(keys: Iterable[str]) -> str | None:
    """The method whose checkpoint format `keys` (flattened, e.g. `extra.upward_.weight`) look like, or None."""
    keys = list(keys)
    for method, (fragment, _) in FORMAT_SIGNATURES.items():
        if any(fragment in key for key in keys):
            return method
    return None


def pickled_class_hint(class_name: str, expected: str) -> str:
    """A sentence naming the method to use when a pickle refers to `class_name`, a class of SAMCL's module files."""
    if class_name.startswith("module.SAMCL") and expected != "slora":
        return f" It looks like {FORMAT_SIGNATURES['slora'][1]}: convert it with method 'slora'."
    return ""


def other_format_hint(keys: Iterable[str], expected: str) -> str:
    """A sentence naming the method to use when `keys` are those of another method's checkpoint, else ""."""
    found = detect_format(keys)
    if found is None or found == expected:
        return ""
    return f" It looks like {FORMAT_SIGNATURES[found][1]}: convert it with method {found!r}."

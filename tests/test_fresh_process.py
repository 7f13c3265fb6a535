"""Adapters of every method on every SAM generation reload in a fresh Python process with identical outputs.

The in-process contract (tests/test_peft_contract.py) reloads into a fresh base model; this checks what a user
does the next day: a new interpreter that only imports `sam_peft` (which registers the tuner types with peft),
loads the base model and the adapter from disk with transformers' and peft's own `from_pretrained`, and gets the
outputs the training process saw. One subprocess serves every case.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from peft import get_peft_model
from safetensors.torch import load_file

from sam_peft import CadConfig, ConvLoraConfig, SamAdapterConfig, SloraConfig, random_sam

GENERATIONS = {"tiny": 128, "sam2-tiny": 128, "sam3-tiny": 112}
CONFIGS = {
    "conv_lora": lambda: ConvLoraConfig(init_weights=False),
    "cad": lambda: CadConfig(image_size=64, channels=32),
    "slora": lambda: SloraConfig(r=4, init_weights=False),
    "sam_adapter": lambda: SamAdapterConfig(scale_factor=8),
}
# SAM-Adapter's prompts have one width, Hiera's stages four (the error says why; tests/test_generations.py)
REFUSED = {("sam2-tiny", "sam_adapter")}
POINTS = {
    "input_points": torch.tensor([[[[40.0, 50.0], [90.0, 20.0]]], [[[60.0, 70.0], [10.0, 100.0]]]]),
    "input_labels": torch.tensor([[[1, 1]], [[1, 0]]]),
}

# Run in the fresh process: load every saved case and write its outputs.
RELOAD = """
import json, sys
import pytest
import torch
from peft import PeftModel
from safetensors.torch import save_file
from transformers import AutoModel
import sam_peft  # registers the tuner types with peft

root = sys.argv[1]
torch.set_num_threads(int(sys.argv[2]))  # the test's: some kernels round differently with another thread count
inputs = torch.load(f"{root}/inputs.pt")
outputs = {}
for case in json.loads(open(f"{root}/cases.json").read()):
    base = AutoModel.from_pretrained(f"{root}/{case['generation']}")
    model = PeftModel.from_pretrained(base, f"{root}/{case['name']}").eval()
    with torch.no_grad():
        masks = model(**inputs[case["generation"]], multimask_output=False).pred_masks
    outputs[case["name"]] = masks.contiguous()
save_file(outputs, f"{root}/outputs.safetensors")
"""


def test_every_adapter_reloads_in_a_fresh_process_with_identical_outputs(tmp_path):
    inputs, cases, expected = {}, [], {}
    for generation, size in GENERATIONS.items():
        base = random_sam(generation, seed=0)
        base.save_pretrained(tmp_path / generation)
        inputs[generation] = {
            "pixel_values": torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1)),
            **POINTS,
        }
        for method, config in CONFIGS.items():
            if (generation, method) in REFUSED:
                with pytest.raises(ValueError, match="cannot adapt"):
                    get_peft_model(random_sam(generation, seed=0), config())
                continue
            torch.manual_seed(0)
            model = get_peft_model(random_sam(generation, seed=0), config())
            with torch.no_grad():  # non-trivial adapter weights (a fresh one is often the identity)
                for name, parameter in model.named_parameters():
                    if parameter.requires_grad:
                        noise = torch.randn(parameter.shape, generator=torch.Generator().manual_seed(len(name)))
                        parameter.add_(noise * 0.1)
            name = f"{generation}-{method}"
            model.save_pretrained(tmp_path / name)
            model.requires_grad_(False)  # as loaded for inference (some kernels round differently otherwise)
            with torch.no_grad():
                expected[name] = model.eval()(**inputs[generation], multimask_output=False).pred_masks
                with model.disable_adapter():
                    assert not torch.equal(
                        model(**inputs[generation], multimask_output=False).pred_masks, expected[name]
                    )
            cases.append({"generation": generation, "name": name})
    torch.save(inputs, tmp_path / "inputs.pt")
    (tmp_path / "cases.json").write_text(json.dumps(cases))
    script = tmp_path / "reload.py"
    script.write_text(RELOAD)
    run = subprocess.run(
        [sys.executable, str(script), str(tmp_path), str(torch.get_num_threads())],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    reloaded = load_file(tmp_path / "outputs.safetensors")
    assert set(reloaded) == set(expected) and len(expected) == len(GENERATIONS) * len(CONFIGS) - len(REFUSED)
    for name, masks in expected.items():
        assert torch.equal(reloaded[name], masks), (name, (reloaded[name] - masks).abs().max())
    assert Path(tmp_path / "tiny-conv_lora" / "adapter_model.safetensors").is_file()

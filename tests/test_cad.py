"""CAD as a PEFT method: the adapter against the spec, no encoder autograd, counts, training, errors.

The PEFT contract (adapters, saving and loading with the BatchNorm statistics, disabling, unloading, merging,
checkpointing, bfloat16) is checked for every tuner in tests/test_peft_contract.py."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model

from sam_peft._registration import register_tuner
from sam_peft.modeling import SamForSemanticSegmentation, SamSemanticSegmentationConfig, random_sam, sam_config
from sam_peft.modeling.random_sam import init_vision_weights_
from sam_peft.tuners.cad import (
    CAD,
    AvgPool2x2,
    CadConfig,
    CadModel,
    CadVisionEncoder,
    ConvAdapter,
    DilatedResidualBlock,
    high_pass_magnitude,
)

register_tuner(CAD, CadConfig, CadModel, CadModel.prefix)  # idempotent; `import sam_peft` will do it

# The tiny SAM (128 px, 16 x 16 embeddings of 32 channels) with the paper's geometry scaled down: the adapter reads
# 128 px and its last block ends at 16 x 16, as 512 px ends at SAM's 64 x 64.
TINY = {"image_size": 128, "channels": 32}
# Conv(6, C, 1) + 3 x [Conv(C, C, 3) + BatchNorm(C)]
PAPER_COUNT = (6 * 256 + 256) + 3 * (256 * 256 * 9 + 256 + 2 * 256)
TINY_COUNT = (6 * 32 + 32) + 3 * (32 * 32 * 9 + 32 + 2 * 32)
DECODER_ONLY = 3_505_536  # the prompt-free decoder (tests/test_semantic_sam.py)


def tiny_semantic(seed: int = 0) -> SamForSemanticSegmentation:
    torch.manual_seed(seed)
    model = SamForSemanticSegmentation(SamSemanticSegmentationConfig.from_sam_config(sam_config("tiny")))
    return init_vision_weights_(model)


def masks(model, pixel_values, **prompts):
    return model(pixel_values=pixel_values, multimask_output=False, **prompts).pred_masks


def test_paper_defaults_and_exact_count_on_meta():
    assert PAPER_COUNT == 1_773_568  # "about 1.77M"
    config = CadConfig()
    assert (config.image_size, config.channels, config.scale, config.negative_slope) == (512, 256, 0.1, 0.1)
    model = get_peft_model(random_sam("vit-b", device="meta"), config)
    assert model.get_nb_trainable_parameters()[0] == PAPER_COUNT
    assert model.base_model.targeted_module_names == ["vision_encoder"]
    buffers = {n: b for n, b in model.named_buffers() if "cad_adapter" in n}
    assert sum(b.numel() for n, b in buffers.items() if "running" in n) == 3 * 2 * 256


def test_semantic_model_trains_adapter_and_decoder_by_default():
    with torch.device("meta"):
        semantic = SamForSemanticSegmentation(SamSemanticSegmentationConfig.from_sam_config(sam_config("vit-b")))
    model = get_peft_model(semantic, CadConfig())
    assert model.peft_config["default"].modules_to_save == ["mask_decoder"]
    assert model.get_nb_trainable_parameters()[0] == PAPER_COUNT + DECODER_ONLY


def numpy_high_pass(images: np.ndarray, ratio: float) -> np.ndarray:
    """The official recipe, with numpy: shift over all axes (as torch.fft.fftshift does without `dim`)."""
    height, width = images.shape[-2:]
    half = int(math.sqrt(height * width * ratio) // 2)
    spectrum = np.fft.fftshift(np.fft.fft2(images, norm="forward"))
    mask = np.ones_like(images)
    mask[..., height // 2 - half : height // 2 + half, width // 2 - half : width // 2 + half] = 0
    return np.abs(np.fft.ifft2(np.fft.ifftshift(spectrum * mask), norm="forward").real)


@pytest.mark.parametrize("shape", [(2, 3, 64, 64), (1, 3, 40, 56)])
def test_high_pass_matches_the_official_recipe(shape):
    images = torch.rand(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 255
    expected = numpy_high_pass(images.numpy(), 0.25)
    torch.testing.assert_close(high_pass_magnitude(images, 0.25), torch.from_numpy(expected))
    assert int(math.sqrt(512 * 512 * 0.25) // 2) == 128  # the spec's half-side at 512 px
    flat = torch.full((1, 3, 64, 64), 7.0)
    assert high_pass_magnitude(flat).abs().max() < 1e-4  # a constant image has no high frequency


def spec_adapter_output(adapter: ConvAdapter, config: CadConfig, pixel_values, size) -> torch.Tensor:
    """CAD's adapter written out from the spec with functional ops (float64), reading `adapter`'s weights."""
    x = F.interpolate(pixel_values, size=(config.image_size,) * 2, mode="bilinear", antialias=True)
    mean = torch.tensor(config.pixel_mean, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(config.pixel_std, dtype=x.dtype).view(1, 3, 1, 1)
    rgb = (x * std + mean) * 255.0
    high = torch.from_numpy(numpy_high_pass(rgb.numpy(), 0.25))
    x = torch.cat([rgb, high], dim=1)
    x = x / (x.amax(dim=(2, 3), keepdim=True) + 1e-5)
    x = F.conv2d(x, adapter.stem.weight, adapter.stem.bias)
    outputs = []
    for block in adapter.blocks:
        y = F.conv2d(x, block.conv.weight, block.conv.bias, padding="same", dilation=2)
        norm = block.norm
        y = F.batch_norm(y, norm.running_mean.clone(), norm.running_var.clone(), norm.weight, norm.bias, norm.training)
        x = F.avg_pool2d(F.leaky_relu(y, 0.1) + x, 2)
        outputs.append(F.adaptive_avg_pool2d(x, size))
    return torch.tanh(outputs[0] + outputs[1] + outputs[2])


@pytest.mark.parametrize(("image_size", "embedding_size"), [(64, 16), (128, 16), (64, 8)])
def test_adapter_forward_matches_the_spec(image_size, embedding_size):
    config = CadConfig(image_size=image_size, channels=16)
    torch.manual_seed(0)
    adapter = ConvAdapter(config).double()
    pixel_values = torch.randn(2, 3, 96, 96, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    size = (embedding_size, embedding_size)
    for training in (True, False):
        adapter.train(training)
        expected = spec_adapter_output(adapter, config, pixel_values, size)
        output = adapter(pixel_values, size)
        assert output.shape == (2, 16, *size)
        torch.testing.assert_close(output, expected)
    assert adapter.blocks[0].norm.num_batches_tracked.item() == 1  # training mode updated the statistics


def test_inits_follow_the_official_code():
    torch.manual_seed(0)
    adapter = ConvAdapter(CadConfig(image_size=64, channels=64))
    for block in adapter.blocks:
        assert torch.equal(block.conv.bias, torch.zeros(64))
        assert torch.equal(block.norm.weight, torch.ones(64)) and torch.equal(block.norm.bias, torch.zeros(64))
        fan_out_std = math.sqrt(2.0 / (64 * 9))  # Kaiming normal, fan_out, relu
        assert abs(block.conv.weight.std().item() / fan_out_std - 1) < 0.05


def test_pooling_and_block_save_less_without_changing_results():
    x = torch.randn(2, 8, 16, 16, dtype=torch.float64, requires_grad=True)
    grad = torch.randn(2, 8, 8, 8, dtype=torch.float64)
    (ours,) = torch.autograd.grad(AvgPool2x2.apply(x), x, grad)
    (reference,) = torch.autograd.grad(F.avg_pool2d(x, 2), x, grad)
    assert torch.equal(AvgPool2x2.apply(x), F.avg_pool2d(x, 2)) and torch.equal(ours, reference)

    torch.manual_seed(0)
    block = DilatedResidualBlock(8, 0.1).double().train()

    def plain(z):
        return F.avg_pool2d(F.leaky_relu(block.norm(block.conv(z)), 0.1) + z, 2)

    results = []
    for forward in (block, plain):
        sizes = []

        def pack(tensor, sizes=sizes):
            sizes.append(tensor.numel())
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            out = forward(x)
        (grad_x,) = torch.autograd.grad(out, x, grad)
        results.append((out.detach(), grad_x, sum(n == x.numel() for n in sizes)))
    (out, grad_x, large_saved), (plain_out, plain_grad, plain_large_saved) = results
    assert torch.equal(out, plain_out) and torch.equal(grad_x, plain_grad)
    assert (large_saved, plain_large_saved) == (3, 4)  # input, conv output, activation; not the pre-pooling sum


@pytest.mark.parametrize("semantic", [False, True], ids=["SamModel", "SamForSemanticSegmentation"])
def test_embedding_is_frozen_encoder_plus_scaled_adapter(semantic, pixel_values):
    base = tiny_semantic() if semantic else random_sam("tiny", seed=0)
    with torch.no_grad():
        frozen = base.vision_encoder(pixel_values).last_hidden_state
    model = get_peft_model(base, CadConfig(**TINY)).eval()
    encoder = model.base_model.model.vision_encoder
    assert isinstance(encoder, CadVisionEncoder)
    embedding = encoder(pixel_values).last_hidden_state
    adapter = encoder.cad_adapter["default"](pixel_values, (16, 16))
    assert torch.equal(embedding, frozen + 0.1 * adapter)
    assert not torch.allclose(embedding, frozen)
    tuple_output = encoder(pixel_values, return_dict=False)
    assert isinstance(tuple_output, tuple) and torch.equal(tuple_output[0], embedding)
    assert torch.equal(model.base_model.model.get_image_embeddings(pixel_values), embedding)
    given = encoder(pixel_values, encoder_embeddings=frozen).last_hidden_state  # e.g. from the embedding cache
    assert torch.equal(given, embedding)


def saved_bytes(fn) -> int:
    """Bytes of the tensors autograd saves for backward while `fn` runs (each storage once)."""
    storages = {}

    def pack(tensor):
        storages[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        fn()
    return sum(storages.values())


def test_encoder_gets_no_gradient_and_keeps_no_activations(pixel_values):
    labels = (pixel_values[:, 0] > 0).long()
    model = get_peft_model(tiny_semantic(), CadConfig(**TINY)).train()
    encoder_outputs = []
    model.base_model.model.vision_encoder.base_layer.register_forward_hook(
        lambda module, args, output: encoder_outputs.append(output.last_hidden_state)
    )
    loss = model(pixel_values=pixel_values, labels=labels).loss
    loss.backward()
    (frozen,) = encoder_outputs
    assert frozen.grad_fn is None and not frozen.requires_grad
    encoder = model.base_model.model.vision_encoder.base_layer
    assert all(p.grad is None and not p.requires_grad for p in encoder.parameters())
    adapter_grads = [p.grad for n, p in model.named_parameters() if "cad_adapter" in n]
    decoder_grads = [p.grad for n, p in model.named_parameters() if "modules_to_save.default" in n]
    assert all(g is not None for g in adapter_grads + decoder_grads)
    assert all(torch.count_nonzero(g) > 0 for g in adapter_grads)

    # What autograd keeps is the adapter's and the decoder's, nothing of the encoder: the same as when the
    # encoder's output is handed to the model from outside.
    cad = model.base_model.model.vision_encoder
    with torch.no_grad():
        precomputed = encoder(pixel_values).last_hidden_state
    full = saved_bytes(lambda: model(pixel_values=pixel_values, labels=labels))
    outside = saved_bytes(
        lambda: model(image_embeddings=cad.add_adapter_outputs(precomputed, pixel_values), labels=labels)
    )
    assert full == outside

    # The count does see encoder activations when they are kept: LoRA inside the encoder keeps more than the
    # frozen encoder of decoder-only tuning.
    decoder_only = tiny_semantic().freeze_encoders().train()
    lora_config = LoraConfig(r=3, target_modules=r"vision_encoder\.layers\.\d+\.attn\.qkv")
    lora = get_peft_model(tiny_semantic(), lora_config).train()
    floor = saved_bytes(lambda: decoder_only(pixel_values=pixel_values, labels=labels))
    assert saved_bytes(lambda: lora(pixel_values=pixel_values, labels=labels)) > 1.5 * floor


def test_prompt_free_adapter_loads_on_a_promptable_sam(tmp_path, pixel_values):
    from sam_peft.modeling import load_encoder_adapter

    semantic = get_peft_model(tiny_semantic(), CadConfig(**TINY)).train()
    with torch.no_grad():
        semantic(pixel_values=pixel_values)  # moves the BatchNorm statistics
    semantic.eval().save_pretrained(tmp_path)
    sam = random_sam("tiny", seed=0)
    sam.vision_encoder.load_state_dict(semantic.base_model.model.vision_encoder.base_layer.state_dict())
    prompted = load_encoder_adapter(sam, tmp_path)
    with torch.no_grad():
        expected = semantic.base_model.model.vision_encoder(pixel_values).last_hidden_state
        assert torch.equal(prompted.base_model.model.vision_encoder(pixel_values).last_hidden_state, expected)
        assert masks(prompted, pixel_values).shape == (2, 1, 1, 64, 64)


def test_wrapper_forwards_encoder_attributes_and_copies(pixel_values):
    model = get_peft_model(random_sam("tiny", seed=0), CadConfig(**TINY)).eval()
    assert model.get_nb_trainable_parameters()[0] == TINY_COUNT
    encoder = model.base_model.model.vision_encoder
    assert encoder.config.output_channels == 32 and encoder.patch_embed is encoder.base_layer.patch_embed
    assert model.get_input_embeddings() is encoder.base_layer.patch_embed
    clone = copy.deepcopy(model)
    with torch.no_grad():
        assert torch.equal(masks(clone, pixel_values), masks(model, pixel_values))


@pytest.mark.parametrize(
    "prompts",
    [
        {},
        {"input_points": torch.tensor([[[[40.0, 50.0]]]]).repeat(2, 1, 1, 1), "input_labels": torch.ones(2, 1, 1)},
        {"input_boxes": torch.tensor([[[10.0, 10.0, 90.0, 100.0]]]).repeat(2, 1, 1)},
    ],
    ids=["no-prompt", "points", "boxes"],
)
def test_trains_on_prompted_sam(prompts, pixel_values):
    model = get_peft_model(random_sam("tiny", seed=0), CadConfig(**TINY, modules_to_save=["mask_decoder"])).train()
    masks(model, pixel_values, **prompts).square().mean().backward()
    grads = [p.grad for n, p in model.named_parameters() if "cad_adapter" in n]
    assert grads and all(g is not None and torch.count_nonzero(g) > 0 for g in grads)


def shapes_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Two 128 px images showing a bright rectangle (the foreground label) on a dark noisy background."""
    labels = torch.zeros(2, 128, 128, dtype=torch.long)
    labels[0, 16:64, 16:72] = 1
    labels[1, 48:112, 40:96] = 1
    noise = 0.1 * torch.randn(2, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    return labels[:, None].float().expand(2, 3, 128, 128) * 2 - 1 + noise, labels


def test_training_lowers_the_loss():
    pixel_values, labels = shapes_batch()
    # adapter and decoder train (the adapter reads 64 px: half the time of a step at 128 px)
    model = get_peft_model(tiny_semantic(), CadConfig(image_size=64, channels=32))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)

    def evaluate() -> float:
        model.eval()
        with torch.no_grad():
            return model(pixel_values=pixel_values, labels=labels).loss.item()

    initial = evaluate()
    for _ in range(15):
        model.train()
        loss = model(pixel_values=pixel_values, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert evaluate() <= 0.7 * initial


def test_adapter_stays_float32_on_a_bfloat16_model(pixel_values):
    model = get_peft_model(random_sam("tiny", seed=0).to(torch.bfloat16), CadConfig(**TINY)).train()
    adapter = model.base_model.model.vision_encoder.cad_adapter["default"]
    assert {t.dtype for t in (*adapter.parameters(), adapter.blocks[0].norm.running_var)} == {torch.float32}
    out = masks(model, pixel_values.to(torch.bfloat16))
    out.float().square().mean().backward()
    assert out.dtype == torch.bfloat16 and adapter.stem.weight.grad is not None


def test_errors_name_the_problem(pixel_values):
    with pytest.raises(
        ValueError, match=r"CadConfig.channels is 256 but the image embedding of 'vision_encoder' has 32"
    ):
        get_peft_model(random_sam("tiny", seed=0), CadConfig(image_size=64))
    with pytest.raises(
        ValueError, match=r"CAD target 'mask_decoder' is a SamMaskDecoder; CAD wraps SAM's whole vision"
    ):
        get_peft_model(random_sam("tiny", seed=0), CadConfig(**TINY, target_modules="mask_decoder"))
    with pytest.raises(ValueError, match="image_size must be a positive multiple of 8"):
        CadConfig(image_size=100)
    with pytest.raises(ValueError, match="negative_slope must be positive"):
        CadConfig(negative_slope=0.0)
    with pytest.raises(ValueError, match="high_pass_ratio must be in"):
        CadConfig(high_pass_ratio=1.5)

    model = get_peft_model(random_sam("tiny", seed=0), CadConfig(**TINY))
    model.base_model.model.vision_encoder.base_layer.neck.conv1.weight.requires_grad_(True)
    with pytest.raises(ValueError, match=r"CAD runs the vision encoder without autograd, but \d+ of its parameters"):
        masks(model, pixel_values)
    with pytest.raises(ValueError, match="shape"):
        model.base_model.model.vision_encoder.cad_adapter["default"](pixel_values[:, :1], (16, 16))

"""SAMCL's components: the block-feature buffer, the module selector and the continual-learning metrics."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from sam_peft.continual import (
    BASE_CLASS,
    BASE_DOMAIN,
    BUFFER_FILE,
    SELECTOR_CONFIG_FILE,
    CorruptBufferError,
    EmbeddingBuffer,
    ModuleSelector,
    average_accuracy,
    continual_metrics,
    forgetting,
    forward_transfer,
    image_bytes,
    save_accuracy_heatmap,
)
from sam_peft.data.synthetic import binary_samples
from sam_peft.modeling import block_features, encoder_prefix, encoder_suffix, random_sam

TINY_WIDTH = 32  # hidden size of the tiny SAM's vision encoder
IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


@pytest.fixture(scope="module")
def encoder():
    """The tiny SAM's vision encoder, with a non-zero position embedding as in released checkpoints."""
    encoder = random_sam("tiny", seed=0).requires_grad_(False).vision_encoder
    torch.nn.init.normal_(encoder.pos_embed, std=0.5, generator=torch.Generator().manual_seed(0))
    return encoder


def pixels(images: np.ndarray) -> torch.Tensor:
    """(n, H, W, 3) uint8 images -> (n, 3, H, W) normalised pixel values."""
    return (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255 - IMAGENET_MEAN) / IMAGENET_STD


def clusters(count: int, seed: int, centers: torch.Tensor, spread: float = 0.7) -> list[torch.Tensor]:
    """`count` Gaussian samples around each center: one (count, C) tensor per center."""
    generator = torch.Generator().manual_seed(seed)
    return [center + spread * torch.randn(count, center.numel(), generator=generator) for center in centers]


# ---------------------------------------------------------------------------------------------------------------
# Block features


@pytest.mark.parametrize("block_index", [0, 1, 2, 3])
def test_prefix_then_suffix_equals_the_full_encoder(encoder, pixel_values, block_index):
    ran = []
    hooks = [layer.register_forward_hook(lambda *_, i=i: ran.append(i)) for i, layer in enumerate(encoder.layers)]
    hooks.append(encoder.neck.register_forward_hook(lambda *_: ran.append("neck")))
    try:
        with torch.no_grad():
            hidden_states, features = encoder_prefix(encoder, pixel_values, block_index)
            assert ran == list(range(block_index + 1))  # nothing after the feature block
            ran.clear()
            pooled = block_features(encoder, pixel_values, block_index)
            assert ran == list(range(block_index + 1))
            ran.clear()
            embeddings = encoder_suffix(encoder, hidden_states, block_index)
            assert ran == [*range(block_index + 1, len(encoder.layers)), "neck"]
    finally:
        for hook in hooks:
            hook.remove()
    with torch.no_grad():
        full = encoder(pixel_values).last_hidden_state
    assert hidden_states.shape == (2, 16, 16, TINY_WIDTH)
    assert torch.equal(embeddings, full)
    assert features.shape == (2, TINY_WIDTH) and torch.equal(pooled, features)
    torch.testing.assert_close(features, hidden_states.reshape(2, -1, TINY_WIDTH).mean(dim=1))


def test_block_helpers_check_their_arguments(encoder, pixel_values):
    with pytest.raises(TypeError, match=r"SamModel is not a SAM vision encoder.*Pass `model.vision_encoder`"):
        block_features(random_sam("tiny"), pixel_values, 1)
    with pytest.raises(ValueError, match=r"block_index must be in \[0, 3\]"):
        block_features(encoder, pixel_values, 4)


# ---------------------------------------------------------------------------------------------------------------
# Buffer


def test_buffer_keeps_the_first_entries_of_each_domain_and_round_trips_bit_exactly(tmp_path):
    generator = torch.Generator().manual_seed(0)
    kvasir, camo, base = (torch.randn(n, TINY_WIDTH, generator=generator) for n in (7, 3, 5))
    buffer = EmbeddingBuffer(TINY_WIDTH, entries_per_domain=5, block_index=2)
    assert buffer.add_domain("kvasir", kvasir) == 5
    assert buffer.add_domain("camo", camo) == 3
    assert buffer.add_domain(BASE_DOMAIN, base) == 5
    assert len(buffer) == 13 and buffer.domain_lengths() == {"kvasir": 5, "camo": 3, BASE_DOMAIN: 5}
    assert buffer.learned_domains == ["kvasir", "camo"] and buffer.has_base_domain
    assert torch.equal(buffer.features, torch.cat([kvasir[:5], camo, base]))
    assert buffer.labels.tolist() == [0] * 5 + [1] * 3 + [2] * 5

    path = buffer.save(tmp_path)
    assert path == tmp_path / BUFFER_FILE
    loaded = EmbeddingBuffer.load(tmp_path)
    assert torch.equal(loaded.features, buffer.features) and torch.equal(loaded.labels, buffer.labels)
    assert loaded.domains == buffer.domains
    assert (loaded.feature_dim, loaded.entries_per_domain, loaded.block_index, loaded.dtype) == (
        TINY_WIDTH,
        5,
        2,
        torch.float32,
    )

    half = EmbeddingBuffer(TINY_WIDTH, dtype=torch.float16)
    half.add_domain("kvasir", kvasir)
    half.save(tmp_path / "half")
    reloaded = EmbeddingBuffer.load(tmp_path / "half")
    assert reloaded.dtype == torch.float16 and torch.equal(reloaded.features, kvasir.half())


def test_bytes_per_entry_against_a_stored_image(tmp_path):
    vit_b = EmbeddingBuffer.for_encoder(random_sam("vit-b", device="meta").vision_encoder)
    assert (vit_b.feature_dim, vit_b.block_index, vit_b.entries_per_domain) == (768, 6, 300)
    assert vit_b.bytes_per_entry == 768 * 4 == 3072
    assert image_bytes() == 512 * 512 * 3 == 786_432
    assert vit_b.compression_ratio() == 256.0
    assert EmbeddingBuffer(768, dtype=torch.float16).compression_ratio() == 512.0
    assert vit_b.compression_ratio(1024, 1024) == 1024.0

    # On disk an entry costs its vector and nothing more: the domain ids come from per-domain counts.
    buffer = EmbeddingBuffer(TINY_WIDTH, entries_per_domain=300)
    buffer.add_domain("a", torch.randn(300, TINY_WIDTH))
    buffer.add_domain("b", torch.randn(200, TINY_WIDTH))
    size = buffer.save(tmp_path).stat().st_size
    assert buffer.nbytes == 500 * TINY_WIDTH * 4
    assert 0 < size - buffer.nbytes < 1024


def test_add_domain_images_stores_block_features_of_the_first_images(encoder):
    images = torch.randn(7, 3, 128, 128, generator=torch.Generator().manual_seed(3))
    read = []

    def batches():
        for start in range(0, 7, 3):
            read.append(start)
            yield {"pixel_values": images[start : start + 3]}

    buffer = EmbeddingBuffer.for_encoder(encoder, block_index=1, entries_per_domain=5)
    assert buffer.add_domain_images("kvasir", encoder, batches()) == 5
    assert read == [0, 3]  # stops reading once five images were seen
    with torch.no_grad():
        expected = block_features(encoder, images[:5], 1)
    torch.testing.assert_close(buffer.features, expected, rtol=1e-5, atol=1e-6)  # batched differently


def test_buffer_errors_name_the_problem(tmp_path):
    buffer = EmbeddingBuffer(TINY_WIDTH)
    buffer.add_domain("kvasir", torch.zeros(2, TINY_WIDTH))
    with pytest.raises(ValueError, match="Domain 'kvasir' is already in the buffer"):
        buffer.add_domain("kvasir", torch.zeros(2, TINY_WIDTH))
    with pytest.raises(ValueError, match=r"must have shape \(n, 32\), got \(2, 16\)"):
        buffer.add_domain("camo", torch.zeros(2, 16))
    with pytest.raises(ValueError, match="NaN or infinite"):
        buffer.add_domain("camo", torch.full((2, TINY_WIDTH), math.nan))
    with pytest.raises(ValueError, match="has no features"):
        buffer.add_domain("camo", torch.zeros(0, TINY_WIDTH))
    assert buffer.domains == ["kvasir"]  # failed additions leave nothing behind
    with pytest.raises(ValueError, match="Storage dtype must be one of"):
        EmbeddingBuffer(TINY_WIDTH, dtype=torch.int8)

    with pytest.raises(FileNotFoundError, match="No embedding buffer at"):
        EmbeddingBuffer.load(tmp_path / "nowhere")
    path = buffer.save(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptBufferError, match="not a readable safetensors file"):
        EmbeddingBuffer.load(tmp_path)
    path.write_bytes(b"not a safetensors file at all")
    with pytest.raises(CorruptBufferError, match="not a readable safetensors file"):
        EmbeddingBuffer.load(tmp_path)

    metadata = {"format_version": "1", "domains": '["a", "b"]', "feature_dim": "32", "entries_per_domain": "300"}
    metadata |= {"block_index": "6", "dtype": "float32"}
    save_file({"features": torch.zeros(5, 32), "counts": torch.tensor([2, 2])}, path, metadata=metadata)
    with pytest.raises(CorruptBufferError, match=r"counts \[2, 2\] do not match its 2 domains"):
        EmbeddingBuffer.load(tmp_path)
    save_file({"features": torch.zeros(4, 32), "counts": torch.tensor([2, 2])}, path, metadata={"dtype": "float32"})
    with pytest.raises(CorruptBufferError, match="lacks or has invalid buffer metadata"):
        EmbeddingBuffer.load(tmp_path)


# ---------------------------------------------------------------------------------------------------------------
# Selector


def test_selector_architecture_follows_the_paper():
    selector = ModuleSelector(768, domains=["kvasir", "camo"])
    linears = [m for m in selector.modules() if isinstance(m, torch.nn.Linear)]
    norms = [m for m in selector.modules() if isinstance(m, torch.nn.BatchNorm1d)]
    assert [(m.in_features, m.out_features) for m in linears] == [(768, 768), (768, 192), (192, 192), (192, 3)]
    assert [m.num_features for m in norms] == [768, 192, 192]
    assert selector.classes == [BASE_DOMAIN, "kvasir", "camo"] and selector.num_classes == 3


def test_selector_separates_domains_of_sam_block_features(encoder):
    """Four domains of distinct appearance, encoded by the tiny SAM, told apart on images the selector never saw."""
    images = binary_samples(4 * 40, seed=0)[0]
    red = np.concatenate([np.clip(images[80:120, ..., :1].astype(int) + 140, 0, 255), images[80:120, ..., 1:] // 3], -1)
    domains = {
        BASE_DOMAIN: np.clip(images[:40].astype(int) + 100, 0, 255),  # brightened: stands for the original domain
        "ellipses": images[40:80],
        "red": red,
        "dark": images[120:] // 4,
    }
    buffer = EmbeddingBuffer.for_encoder(encoder, block_index=1, entries_per_domain=28)
    held_out = {}
    with torch.no_grad():
        for name, domain_images in domains.items():
            values = pixels(domain_images.astype(np.uint8))
            buffer.add_domain_images(name, encoder, [values[:16], values[16:]])
            held_out[name] = block_features(encoder, values[28:], 1)
    selector = ModuleSelector(TINY_WIDTH, seed=0)
    # The paper's lr and batch; 112 entries instead of 300 per domain give few steps per epoch: 4x the epochs.
    losses = selector.fit(buffer, epochs=100)
    assert len(losses) == 100 and losses[-1] < losses[0] / 2
    assert selector.classes == [BASE_DOMAIN, "ellipses", "red", "dark"]
    predicted = selector.predict(torch.cat(list(held_out.values())))
    truth = torch.arange(4).repeat_interleave(12)
    assert (predicted == truth).float().mean().item() >= 0.9
    names = selector.predict_domains(held_out["red"])
    assert names.count("red") >= 10
    base_names = selector.predict_domains(held_out[BASE_DOMAIN])
    assert base_names.count(None) >= 10  # None: the base SAM, no module


def test_selector_grows_with_each_domain_and_keeps_learned_rows():
    centers = torch.randn(4, 64, generator=torch.Generator().manual_seed(0))
    names = [BASE_DOMAIN, "a", "b", "c"]
    train = dict(zip(names, clusters(100, 1, centers), strict=True))
    test = dict(zip(names, clusters(50, 2, centers), strict=True))

    buffer = EmbeddingBuffer(64, entries_per_domain=100)
    selector = ModuleSelector(64, seed=0)
    for name in ["a", BASE_DOMAIN, "b", "c"]:  # the base domain may come at any point
        buffer.add_domain(name, train[name])
        if len(buffer) < 200:
            continue
        selector.fit(buffer)
        assert selector.num_classes == len(buffer.learned_domains) + 1
        predicted = selector.predict(torch.cat([test[n] for n in buffer.domains]))
        truth = torch.cat([torch.full((50,), selector.classes.index(n)) for n in buffer.domains])
        assert (predicted == truth).float().mean().item() >= 0.9
    assert selector.classes == [BASE_DOMAIN, "a", "b", "c"]

    grown = ModuleSelector(8, domains=["a"], seed=0)
    before = grown.head.weight.detach().clone(), grown.head.bias.detach().clone()
    grown.add_domains(["b", "c"])
    assert grown.head.weight.shape == (3 + 1, 2)
    assert torch.equal(grown.head.weight[:2], before[0]) and torch.equal(grown.head.bias[:2], before[1])

    other = EmbeddingBuffer(64)
    other.add_domain("b", train["b"])
    other.add_domain("a", train["a"])
    with pytest.raises(ValueError, match=r"must begin with the selector's domains \['a', 'b', 'c'\]"):
        selector.fit(other)
    with pytest.raises(ValueError, match="reserved 'base'"):
        selector.add_domains([BASE_DOMAIN])
    with pytest.raises(ValueError, match="must be new"):
        selector.add_domains(["a"])


def test_selector_is_deterministic_and_round_trips(tmp_path):
    centers = torch.randn(3, TINY_WIDTH, generator=torch.Generator().manual_seed(5))
    buffer = EmbeddingBuffer(TINY_WIDTH, entries_per_domain=30)
    for name, features in zip(["x", "y", "z"], clusters(30, 6, centers), strict=True):
        buffer.add_domain(name, features)
    probe = torch.cat(clusters(10, 7, centers))

    def trained(seed: int) -> ModuleSelector:
        selector = ModuleSelector(TINY_WIDTH, seed=seed)
        selector.fit(buffer, epochs=5)
        return selector

    first, second, other = trained(0), trained(0), trained(1)
    for name, tensor in first.state_dict().items():
        assert torch.equal(tensor, second.state_dict()[name]), name
    assert not torch.equal(first.head.weight, other.head.weight)

    first.save(tmp_path)
    config = json.loads((tmp_path / SELECTOR_CONFIG_FILE).read_text())
    assert config["domains"] == ["x", "y", "z"] and config["base_class"] == BASE_CLASS == 0
    loaded = ModuleSelector.load(tmp_path)
    assert not loaded.training and loaded.classes == first.classes
    with torch.no_grad():
        assert torch.equal(loaded(probe), first.eval()(probe))  # BatchNorm statistics included
    assert torch.equal(loaded.predict(probe), first.predict(probe))
    assert loaded.predict_domains(probe) == first.predict_domains(probe)

    config["domains"] = ["x", "y"]
    (tmp_path / SELECTOR_CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"does not fit a 32-d selector of \['x', 'y'\]"):
        ModuleSelector.load(tmp_path)
    with pytest.raises(FileNotFoundError, match="No module selector file"):
        ModuleSelector.load(tmp_path / "nowhere")


def test_selector_never_trains_batchnorm_on_a_single_example():
    buffer = EmbeddingBuffer(TINY_WIDTH)
    buffer.add_domain("x", torch.randn(13, TINY_WIDTH))
    buffer.add_domain("y", torch.randn(12, TINY_WIDTH) + 1)  # 25 entries: a batch of 24 and one left over
    sizes = []
    selector = ModuleSelector(TINY_WIDTH)
    selector.trunk[0].register_forward_hook(lambda module, args, output: sizes.append(len(args[0])))
    selector.fit(buffer, epochs=3)
    assert sizes == [24, 24, 24]

    pair = EmbeddingBuffer(TINY_WIDTH)
    pair.add_domain("x", torch.randn(1, TINY_WIDTH))
    pair.add_domain("y", torch.randn(1, TINY_WIDTH))
    assert len(ModuleSelector(TINY_WIDTH).fit(pair, epochs=2)) == 2  # one batch of both
    assert ModuleSelector(TINY_WIDTH).predict(torch.randn(1, TINY_WIDTH)).shape == (1,)

    single = EmbeddingBuffer(TINY_WIDTH)
    single.add_domain("x", torch.randn(1, TINY_WIDTH))
    with pytest.raises(ValueError, match="holds 1 entries; training the selector needs at least 2"):
        ModuleSelector(TINY_WIDTH).fit(single)
    with pytest.raises(ValueError, match="holds 16-d features; this selector takes 32"):
        ModuleSelector(TINY_WIDTH).fit(EmbeddingBuffer(16))
    with pytest.raises(ValueError, match=r"Expected features of shape \(B, 32\)"):
        ModuleSelector(TINY_WIDTH).predict(torch.zeros(TINY_WIDTH))


# ---------------------------------------------------------------------------------------------------------------
# Metrics

NAN = math.nan
# Three stages, four domains: the last column is evaluated after the last stage only as a "next" domain.
SCORES = [
    [0.80, 0.30, NAN, NAN],
    [0.70, 0.90, 0.40, NAN],
    [0.60, 0.85, 0.70, 0.20],
]


def test_metrics_follow_their_definitions():
    # Last stage (i = 2): AA over j <= 2, FM over the two earlier domains, FT over the pairs (0, 1) and (1, 2).
    assert average_accuracy(SCORES) == pytest.approx((0.60 + 0.85 + 0.70) / 3)
    assert forgetting(SCORES) == pytest.approx(((0.80 - 0.60) + (0.90 - 0.85)) / 2)
    assert forgetting(SCORES, include_current=True) == pytest.approx(((0.80 - 0.60) + (0.90 - 0.85) + 0.0) / 3)
    assert forward_transfer(SCORES) == pytest.approx((0.30 + 0.40) / 2)

    # Stage 1, and stage 0 where nothing came before.
    assert average_accuracy(SCORES, stage=1) == pytest.approx((0.70 + 0.90) / 2)
    assert forgetting(SCORES, stage=1) == pytest.approx(0.80 - 0.70)
    assert forward_transfer(SCORES, stage=1) == pytest.approx(0.30)
    assert average_accuracy(SCORES, stage=0) == pytest.approx(0.80)
    assert math.isnan(forgetting(SCORES, stage=0)) and math.isnan(forward_transfer(SCORES, stage=0))
    assert forgetting(SCORES, stage=0, include_current=True) == 0.0
    assert average_accuracy(SCORES, stage=-2) == average_accuracy(SCORES, stage=1)

    per_stage = continual_metrics(torch.tensor(SCORES))
    assert per_stage["average_accuracy"] == pytest.approx([0.80, (0.70 + 0.90) / 2, (0.60 + 0.85 + 0.70) / 3])
    assert per_stage["forgetting"][1:] == pytest.approx([0.10, 0.125])
    assert per_stage["forward_transfer"][1:] == pytest.approx([0.30, 0.35])

    # One domain: AA is its score; nothing was forgotten or transferred.
    assert (
        average_accuracy([[0.5]]) == 0.5 and math.isnan(forgetting([[0.5]])) and math.isnan(forward_transfer([[0.5]]))
    )
    # A model that improves on earlier domains has negative forgetting.
    assert forgetting([[0.5, 0.1], [0.7, 0.6]]) == pytest.approx(0.5 - 0.7)


def test_metrics_reject_missing_cells_and_bad_shapes():
    gap = [row[:] for row in SCORES]
    gap[2][0] = NAN
    with pytest.raises(ValueError, match=r"Average accuracy needs A\[2, 0\] \(domain 0 after stage 2\)"):
        average_accuracy(gap)
    with pytest.raises(ValueError, match=r"Forgetting needs A\[2, 0\]"):
        forgetting(gap)
    assert forward_transfer(gap) == pytest.approx(0.35)  # does not read that cell
    no_transfer = [row[:] for row in SCORES]
    no_transfer[0][1] = NAN
    with pytest.raises(ValueError, match=r"Forward transfer needs A\[0, 1\]"):
        forward_transfer(no_transfer)
    with pytest.raises(ValueError, match="at least as many domains as stages"):
        average_accuracy([[0.5], [0.6]])
    with pytest.raises(ValueError, match="Stage 3 is out of range for a matrix of 3 stages"):
        average_accuracy(SCORES, stage=3)


def test_heatmap_png_shows_the_matrix(tmp_path):
    domains = ["kvasir", "camo", "istd", "isic"]
    path = tmp_path / "scores.png"
    save_accuracy_heatmap(path, SCORES, domains)
    assert path.stat().st_size > 0
    image = Image.open(path)
    assert image.format == "PNG" and image.width > 4 * 64 and image.height > 3 * 36
    colors = {color for _, color in image.convert("RGB").getcolors(maxcolors=1 << 20)}
    assert (224, 224, 224) in colors  # the cells not evaluated

    complete = tmp_path / "complete.png"
    save_accuracy_heatmap(complete, [[1.0, 0.0], [0.5, 1.0]], ["a", "b"], value_range=(0.0, 1.0))
    colors = {color for _, color in Image.open(complete).convert("RGB").getcolors(maxcolors=1 << 20)}
    assert (224, 224, 224) not in colors
    assert {(253, 231, 37), (68, 1, 84)} <= colors  # the ends of the colour map: 1.0 and 0.0

    with pytest.raises(ValueError, match="needs 4 domain names and 3 stage names, got 3 and 3"):
        save_accuracy_heatmap(path, SCORES, domains[:3])

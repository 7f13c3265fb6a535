"""The embedding cache: exact values, invalidation, crash safety, and identical training with and without it."""

from __future__ import annotations

import os

import pytest
import torch
from peft import LoraConfig, get_peft_model

from sam_peft._registration import register_tuner
from sam_peft.modeling import SamForSemanticSegmentation, SamSemanticSegmentationConfig, random_sam, sam_config
from sam_peft.modeling.random_sam import init_vision_weights_
from sam_peft.training.embedding_cache import (
    CorruptEntryError,
    EmbeddingCache,
    EntryStore,
    encoder_fingerprint,
    frozen_vision_encoder,
)
from sam_peft.tuners.cad import CAD, CadConfig, CadModel

register_tuner(CAD, CadConfig, CadModel, CadModel.prefix)  # idempotent

CAD_TINY = CadConfig(image_size=128, channels=32)
EMBEDDING_BYTES_FP16 = 32 * 16 * 16 * 2  # the tiny SAM's embedding, 32 x 16 x 16


def frozen_sam(seed: int = 0):
    return random_sam("tiny", seed=seed).requires_grad_(False)


def tiny_semantic(seed: int = 0) -> SamForSemanticSegmentation:
    torch.manual_seed(seed)
    model = SamForSemanticSegmentation(SamSemanticSegmentationConfig.from_sam_config(sam_config("tiny")))
    return init_vision_weights_(model)


def fresh(model, pixel_values) -> torch.Tensor:
    with torch.no_grad():
        return model.vision_encoder(pixel_values).last_hidden_state


def test_float32_entries_equal_a_fresh_encoder_pass_bit_for_bit(tmp_path, pixel_values):
    sam = frozen_sam()
    cache = EmbeddingCache(tmp_path, sam, dtype=torch.float32)
    expected = fresh(sam, pixel_values)
    assert torch.equal(cache.get_or_compute(pixel_values), expected)  # computed and stored
    assert torch.equal(cache.get_or_compute(pixel_values), expected)  # read back
    assert (cache.stats.hits, cache.stats.misses, len(cache)) == (2, 2, 2)
    reopened = EmbeddingCache(tmp_path, frozen_sam())  # another process, same weights: same directory
    assert reopened.fingerprint == cache.fingerprint


def test_float16_entries_equal_the_rounded_encoder_output(tmp_path, pixel_values):
    sam = frozen_sam()
    cache = EmbeddingCache(tmp_path, sam)
    expected = fresh(sam, pixel_values).half().float()
    first = cache.get_or_compute(pixel_values)  # rounded already on the pass that computes
    assert first.dtype == torch.float32 and torch.equal(first, expected)
    assert torch.equal(cache.get_or_compute(pixel_values), expected)
    sizes = {f.stat().st_size for f in cache.directory.glob("??/*.emb")}
    assert len(list(cache.directory.glob("??/*.emb"))) == 2
    assert len(sizes) == 1 and 0 < sizes.pop() - EMBEDDING_BYTES_FP16 <= 128  # payload plus a fixed header


def test_changed_weights_or_image_or_augmentation_miss(tmp_path, pixel_values):
    sam = frozen_sam()
    cache = EmbeddingCache(tmp_path, sam, dtype=torch.float32)
    cache.get_or_compute(pixel_values)
    old_directory = cache.directory
    with torch.no_grad():
        sam.vision_encoder.neck.conv1.weight.mul_(1.5)  # noticed without re-reading the weights
    assert torch.equal(cache.get_or_compute(pixel_values), fresh(sam, pixel_values))
    assert cache.directory != old_directory and cache.stats.misses == 4
    assert EmbeddingCache(tmp_path, frozen_sam(seed=1)).fingerprint != cache.fingerprint

    changed = pixel_values.clone()
    changed[0, 0, 0, 0] += 1.0
    cache.get_or_compute(changed)
    assert (cache.stats.hits, cache.stats.misses) == (1, 5)  # the second image is unchanged

    keys = ["image-a", "image-b"]
    flipped = pixel_values.flip(-1)
    cache.get_or_compute(pixel_values, keys=keys, augmentation="none")
    assert torch.equal(cache.get_or_compute(flipped, keys=keys, augmentation="hflip"), fresh(sam, flipped))
    assert cache.stats.misses == 9
    assert cache.prune() == 2 and list(tmp_path.iterdir()) == [cache.directory]  # old weights, seed 1


@pytest.mark.parametrize("damage", ["truncate", "flip_byte", "empty"])
def test_damaged_entry_is_detected_and_recomputed(tmp_path, pixel_values, damage, caplog):
    sam = frozen_sam()
    cache = EmbeddingCache(tmp_path, sam, dtype=torch.float32)
    cache.get_or_compute(pixel_values)
    key = cache.entry_keys(pixel_values)[0]
    path = cache.store.path(key)
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "flip_byte":
        data[-100] ^= 0xFF
    else:
        data = bytearray()
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptEntryError):
        cache.store.read(key)

    # The damaged first image is encoded again, alone: bit-identical to a fresh pass over that batch of one.
    repaired = cache.get_or_compute(pixel_values)
    assert torch.equal(repaired[:1], fresh(sam, pixel_values[:1]))
    assert torch.equal(repaired[1:], fresh(sam, pixel_values)[1:])
    assert (cache.stats.repaired, cache.stats.misses, cache.stats.hits) == (1, 3, 1)
    assert "Deleting it; it will be recomputed" in caplog.text
    assert cache.store.read(key) is not None  # rewritten whole


def test_interrupted_write_leaves_no_entry(tmp_path, pixel_values, monkeypatch):
    sam = frozen_sam()
    cache = EmbeddingCache(tmp_path, sam, dtype=torch.float32)

    def crash(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        cache.get_or_compute(pixel_values)
    monkeypatch.undo()
    assert len(cache) == 0 and not list(cache.directory.glob("??/.*.tmp"))

    # A process killed mid-write leaves a temporary file: never read as an entry, removed by repair().
    key = cache.entry_keys(pixel_values)[0]
    leftover = cache.store.path(key).with_name(f".{key}.emb.123.abcd.tmp")
    leftover.parent.mkdir(parents=True, exist_ok=True)
    leftover.write_bytes(b"SAMPEMB1 partial")
    assert torch.equal(cache.get_or_compute(pixel_values), fresh(sam, pixel_values))
    assert cache.stats.misses == 4 and cache.repair() == 1 and not leftover.exists()


def test_entry_store_round_trips_dtypes(tmp_path):
    store = EntryStore(tmp_path, fsync=True)
    key = "ab" * 32
    for dtype in (torch.float16, torch.bfloat16, torch.float32):
        tensor = torch.randn(4, 3, 2).to(dtype)
        store.write(key, tensor)
        (read,) = store.read(key)
        assert read.dtype == dtype and torch.equal(read, tensor)
    assert store.read("cd" * 32) is None
    with pytest.raises(ValueError, match=r"Cannot store a torch\.int64"):
        store.write(key, torch.zeros(3, dtype=torch.long))


def test_an_entry_of_several_levels_is_whole_or_refused(tmp_path):
    """SAM 2's FPN levels: one file per image holding every level; a file cut anywhere, even between two levels,
    or with bytes after its last level, is refused."""
    store = EntryStore(tmp_path)
    key = "ef" * 32
    levels = (torch.randn(4, 8, 8).half(), torch.randn(4, 4, 4).half(), torch.randn(4, 2, 2))
    store.write(key, levels)
    read = store.read(key)
    assert len(read) == 3 and all(a.dtype == b.dtype and torch.equal(a, b) for a, b in zip(read, levels, strict=True))
    data = store.path(key).read_bytes()
    one_level = EntryStore(tmp_path / "one")
    one_level.write(key, levels[0])
    boundary = one_level.path(key).stat().st_size  # where the second level's header starts
    assert 0 < boundary < len(data)
    for cut in (boundary, boundary + 10, len(data) - 1):
        store.path(key).write_bytes(data[:cut])
        with pytest.raises(CorruptEntryError):
            store.read(key)
    store.path(key).write_bytes(data + b"\0")
    with pytest.raises(CorruptEntryError, match="bytes after its 3 tensors"):
        store.read(key)


def test_fill_shows_progress_and_counts(tmp_path, pixel_values, capsys):
    sam = frozen_sam()
    cache = EmbeddingCache(tmp_path, sam, dtype=torch.float32)
    batches = [{"pixel_values": pixel_values, "cache_keys": ["a", "b"]}, pixel_values.flip(-1)]
    first = cache.fill(batches)
    assert (first.misses, first.hits) == (4, 0)
    assert "Caching image embeddings" in capsys.readouterr().err
    second = cache.fill(batches, progress=False)
    assert (second.misses, second.hits) == (0, 4)
    assert torch.equal(cache.get_or_compute(pixel_values, keys=["a", "b"]), fresh(sam, pixel_values))


def test_cad_embeddings_from_the_cache_equal_the_model_and_train_the_adapter(tmp_path, pixel_values):
    model = get_peft_model(tiny_semantic(), CAD_TINY).train()
    cache = EmbeddingCache(tmp_path, model, dtype=torch.float32)
    assert cache.cad is model.base_model.model.vision_encoder
    cached = cache.image_embeddings(pixel_values)
    direct = model.base_model.model.vision_encoder(pixel_values).last_hidden_state
    assert torch.equal(cached, direct)
    cached.square().mean().backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if "cad_adapter" in n)
    with model.disable_adapter(), torch.no_grad():
        assert torch.equal(cache.image_embeddings(pixel_values), cache.get_or_compute(pixel_values))


def train(model, batches, cache: EmbeddingCache | None, through: str = "image_embeddings") -> list[float]:
    """Loss of every step: two epochs over `batches`, AdamW, the same seed.

    With a cache, the model gets `image_embeddings=cache.image_embeddings(...)` or, through "encoder_embeddings"
    (CAD), its pixel values and `encoder_embeddings=cache.get_or_compute(...)`.
    """
    torch.manual_seed(0)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    losses = []
    for _ in range(2):
        for pixel_values, labels in batches:
            model.train()
            if cache is None:
                loss = model(pixel_values=pixel_values, labels=labels).loss
            elif through == "image_embeddings":
                loss = model(image_embeddings=cache.image_embeddings(pixel_values), labels=labels).loss
            else:
                embeddings = cache.get_or_compute(pixel_values)
                loss = model(pixel_values=pixel_values, encoder_embeddings=embeddings, labels=labels).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    return losses


@pytest.mark.parametrize(
    ("method", "through"),
    [("cad", "image_embeddings"), ("cad", "encoder_embeddings"), ("decoder_only", "image_embeddings")],
)
def test_training_with_and_without_the_cache_gives_the_same_loss_curve(tmp_path, method, through):
    generator = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(2):
        pixel_values = torch.randn(2, 3, 128, 128, generator=generator)
        batches.append((pixel_values, (pixel_values[:, 0] > 0.5).long()))

    def build():
        model = tiny_semantic(seed=0)
        return get_peft_model(model, CAD_TINY) if method == "cad" else model.freeze_encoders()

    reference = train(build(), batches, cache=None)
    model = build()
    cache = EmbeddingCache(tmp_path / "fp32", model, dtype=torch.float32)
    assert train(model, batches, cache, through) == reference
    assert (cache.stats.misses, cache.stats.hits) == (4, 4)  # the second epoch read everything

    model = build()
    half = train(model, batches, EmbeddingCache(tmp_path / "fp16", model), through)
    torch.testing.assert_close(torch.tensor(half), torch.tensor(reference), rtol=2e-3, atol=0)


def test_errors_name_the_problem(tmp_path, pixel_values):
    lora = get_peft_model(frozen_sam(), LoraConfig(target_modules=r"vision_encoder\.layers\.\d+\.attn\.qkv"))
    adapter_error = r"holds an adapter layer \('layers.0.attn.qkv', Linear\).*CAD, Decoder-only tuning"
    with pytest.raises(ValueError, match=adapter_error):
        EmbeddingCache(tmp_path, lora)
    with pytest.raises(ValueError, match="has no `vision_encoder`"):
        frozen_vision_encoder(torch.nn.Linear(2, 2))
    cache = EmbeddingCache(tmp_path, random_sam("tiny"))
    with pytest.raises(ValueError, match=r"trainable parameters \(e.g. 'pos_embed'\): cached outputs would go stale"):
        cache.get_or_compute(pixel_values)
    cache.encoder.requires_grad_(False)
    with pytest.raises(ValueError, match="Got 1 keys and 2 augmentation ids for 2 images"):
        cache.get_or_compute(pixel_values, keys=["only-one"])
    with pytest.raises(ValueError, match="Storage dtype must be one of"):
        EmbeddingCache(tmp_path, frozen_sam(), dtype=torch.int8)


def test_fingerprint_covers_every_weight():
    sam = frozen_sam()
    before = encoder_fingerprint(sam.vision_encoder)
    with torch.no_grad():
        sam.vision_encoder.layers[3].mlp.lin2.bias[0] += 1e-3
    assert encoder_fingerprint(sam.vision_encoder) != before

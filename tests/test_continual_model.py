"""ContinualSam: per-domain SLoRA modules on one frozen SAM, routed per image by the module selector."""

from __future__ import annotations

import shutil
from unittest.mock import create_autospec

import pytest
import torch
from continual_checks import assert_routed_equals_each_module
from huggingface_hub import CommitInfo, HfApi, RepoUrl, constants
from transformers import SamModel

from sam_peft import SloraConfig, random_sam, sam_config
from sam_peft.continual import (
    BASE_DOMAIN,
    CONTINUAL_CONFIG_FILE,
    ContinualSam,
    DomainTrainingArguments,
    sample_point_prompts,
)
from sam_peft.continual.prompting import batch_prompts, prompted_segmentation_loss
from sam_peft.data import binary_dataset, prepare_for_sam, sam_collate_fn

DOMAINS = ("polyp", "shadow")
ARGS = DomainTrainingArguments(num_epochs=2, batch_size=8, eval_batch_size=8)
TINY_MODULE = SloraConfig(layers_to_transform=[2, 3])  # the tiny SAM has 4 blocks; features from block 1


def domain_data(domain: str, count: int, seed: int, split: str = "train"):
    return prepare_for_sam(
        binary_dataset(count, 128, seed=seed, split=split, appearance=domain), 128, augmentation=None
    )


def batch_of(dataset, count: int) -> dict:
    return sam_collate_fn([dataset[i] for i in range(count)])


def new_continual(**kwargs) -> ContinualSam:
    defaults = {"entries_per_domain": 16, "selector_epochs": 100, "selector_batch_size": 8}
    return ContinualSam(random_sam("tiny"), TINY_MODULE, **{**defaults, **kwargs})


@pytest.fixture(scope="module")
def learned():
    """Two domains learned in turn, with a snapshot of the first module taken before the second was learned."""
    continual = new_continual()
    continual.learn_domain(DOMAINS[0], domain_data(DOMAINS[0], 16, seed=0), ARGS, progress=False)
    first = {k: v.clone() for k, v in continual.peft_model.state_dict().items() if f".{DOMAINS[0]}" in k}
    continual.learn_domain(DOMAINS[1], domain_data(DOMAINS[1], 16, seed=1), ARGS, progress=False)
    return continual, first


def test_learning_a_domain_keeps_earlier_modules_and_routes_each_image(learned):
    continual, first = learned
    assert continual.domains == list(DOMAINS) and continual.feature_block == 1
    after = continual.peft_model.state_dict()
    assert first and all(torch.equal(after[k], v) for k, v in first.items())  # no forgetting: untouched
    assert not any(p.requires_grad for p in continual.peft_model.parameters())
    correct = total = 0
    for index, domain in enumerate(DOMAINS):
        routed = continual.route(
            batch_of(domain_data(domain, 8, seed=50 + index, split="validation"), 8)["pixel_values"]
        )
        correct += sum(r == domain for r in routed)
        total += len(routed)
    assert correct / total >= 0.9


def test_routed_forward_equals_a_plain_forward_with_each_module(learned):
    continual, _ = learned
    polyp, shadow = (batch_of(domain_data(d, 2, seed=60 + i, split="validation"), 2) for i, d in enumerate(DOMAINS))
    pixel_values = torch.cat([polyp["pixel_values"], shadow["pixel_values"]])
    points, labels = sample_point_prompts(torch.cat([polyp["labels"], shadow["labels"]]), 3, [1, 2, 3, 4])
    domains = ["polyp", "shadow", "polyp", None]
    routed = assert_routed_equals_each_module(continual, pixel_values, points, labels, domains)
    with torch.no_grad():
        # the two modules differ: the same image gives different masks
        as_polyp = continual(pixel_values[:1], points[:1], labels[:1], domains=["polyp"]).pred_masks
        as_shadow = continual(pixel_values[:1], points[:1], labels[:1], domains=["shadow"]).pred_masks
    assert routed.domains == domains and not torch.allclose(as_polyp, as_shadow)


def test_the_shared_blocks_run_once_per_batch(learned):
    continual, _ = learned
    calls = []
    hooks = [
        continual.vision_encoder.layers[i].register_forward_hook(lambda m, a, o, i=i: calls.append(i)) for i in range(4)
    ]
    try:
        batch = batch_of(domain_data("polyp", 2, seed=70, split="validation"), 2)
        points, labels = batch_prompts(batch, ARGS)
        with torch.no_grad():
            continual(batch["pixel_values"], points, labels, domains=["polyp", "shadow"])
    finally:
        for hook in hooks:
            hook.remove()
    # blocks 0 and 1 once for the batch, blocks 2 and 3 once per module group
    assert sorted(calls) == [0, 1, 2, 2, 3, 3]


def test_images_of_no_learned_domain_go_to_the_base_sam(learned, tmp_path):
    continual, _ = learned
    saved = tmp_path / "saved"
    continual.save_pretrained(saved)
    model = ContinualSam.from_pretrained(saved, sam=random_sam("tiny"))
    base_images = domain_data("camouflage", 16, seed=3)
    model.extend_buffer(BASE_DOMAIN, base_images)
    model.fit_selector()
    batch = batch_of(domain_data("camouflage", 4, seed=80, split="validation"), 4)
    points, labels = batch_prompts(batch, ARGS)
    with torch.no_grad():
        routed = model(batch["pixel_values"], points, labels)
        base = random_sam("tiny")(
            pixel_values=batch["pixel_values"], input_points=points, input_labels=labels, multimask_output=False
        )
    assert routed.domains.count(None) >= 3
    for index, domain in enumerate(routed.domains):
        if domain is None:
            torch.testing.assert_close(routed.pred_masks[index], base.pred_masks[index], rtol=1e-5, atol=1e-5)


def test_save_and_load_give_identical_predictions(learned, tmp_path):
    continual, _ = learned
    continual.save_pretrained(tmp_path)
    names = {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()}
    assert {CONTINUAL_CONFIG_FILE, "embedding_buffer.safetensors", "module_selector.safetensors"} <= names
    assert {f"modules/{d}/adapter_model.safetensors" for d in DOMAINS} <= names
    loaded = ContinualSam.from_pretrained(tmp_path, sam=random_sam("tiny"))
    batch = batch_of(domain_data("shadow", 4, seed=90, split="validation"), 4)
    points, labels = batch_prompts(batch, ARGS)
    with torch.no_grad():
        expected, actual = (
            continual(batch["pixel_values"], points, labels),
            loaded(batch["pixel_values"], points, labels),
        )
    assert actual.domains == expected.domains
    assert torch.equal(actual.pred_masks, expected.pred_masks) and torch.equal(actual.iou_scores, expected.iou_scores)
    # a loaded model keeps learning: a third domain gets a fresh module and a selector class
    loaded.learn_domain("lesion", domain_data("lesion", 16, seed=2), ARGS, progress=False)
    assert loaded.domains == [*DOMAINS, "lesion"] and loaded.selector.num_classes == 4


def test_push_and_pull_through_the_hub(learned, tmp_path, monkeypatch):
    continual, _ = learned
    api = create_autospec(HfApi, instance=True)
    api.create_repo.side_effect = lambda repo_id, **_: RepoUrl(f"https://huggingface.co/{repo_id}")
    uploaded = tmp_path / "uploaded"

    def upload_folder(repo_id, folder_path, commit_message):
        shutil.copytree(folder_path, uploaded)
        return CommitInfo(f"https://huggingface.co/{repo_id}/commit/{'a' * 40}", commit_message, "", "a" * 40)

    api.upload_folder.side_effect = upload_folder
    url = continual.push_to_hub("user/samcl-tiny", api=api)
    assert url.endswith("a" * 40) and (uploaded / CONTINUAL_CONFIG_FILE).is_file()
    # pull: the repository as huggingface_hub's offline cache holds it
    cache = tmp_path / "hub"
    storage = cache / "models--user--samcl-tiny"
    (storage / "refs").mkdir(parents=True)
    (storage / "refs" / "main").write_text("1" * 40)
    shutil.copytree(uploaded, storage / "snapshots" / ("1" * 40))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    pulled = ContinualSam.from_pretrained("user/samcl-tiny", sam=random_sam("tiny"))
    assert pulled.domains == list(DOMAINS)


def test_errors_name_the_problem(learned, tmp_path):
    continual, _ = learned
    fresh = new_continual()
    pixel_values = torch.zeros(1, 3, 128, 128)
    with pytest.raises(RuntimeError, match="No domain is learned yet"):
        fresh(pixel_values)
    with pytest.raises(RuntimeError, match="No domain is learned yet"):
        fresh.route(pixel_values)
    with pytest.raises(ValueError, match=r"Domain 'polyp' is already learned"):
        continual.learn_domain("polyp", domain_data("polyp", 8, seed=5), ARGS, progress=False)
    with pytest.raises(ValueError, match="other than the reserved 'base'"):
        fresh.learn_domain(BASE_DOMAIN, domain_data("polyp", 8, seed=5), ARGS, progress=False)
    with pytest.raises(ValueError, match=r"feature_block must come before the first adapted block \(2\)"):
        new_continual(feature_block=2)
    with pytest.raises(TypeError, match="wraps a transformers SamModel"):
        ContinualSam(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="Got 2 domains for 1 images"):
        continual(pixel_values, domains=["polyp", "shadow"])
    continual.save_pretrained(tmp_path)
    wider = sam_config("tiny")
    wider.vision_config.hidden_size, wider.vision_config.mlp_dim = 48, 96
    with pytest.raises(ValueError, match=r"trained on a SAM with .*differs \(hidden_size 32 != 48\)"):
        ContinualSam.from_pretrained(tmp_path, sam=SamModel(wider))
    with pytest.raises(FileNotFoundError, match="is not a continual SAM"):
        ContinualSam.from_pretrained(tmp_path / "modules")


def test_point_prompts_are_fixed_foreground_pixels():
    labels = torch.zeros(2, 8, 8, dtype=torch.long)
    labels[0, 2:4, 5:7] = 1
    labels[:, 0, 0] = 255
    points, point_labels = sample_point_prompts(labels, 3, [7, 7])
    again, _ = sample_point_prompts(labels, 3, [7, 7])
    assert torch.equal(points, again) and points.shape == (2, 1, 3, 2)
    for x, y in points[0, 0].tolist():  # (x, y) at pixel centres inside the foreground
        assert labels[0, int(y), int(x)] == 1 and x % 1 == 0.5
    assert len({tuple(p) for p in points[0, 0].tolist()}) == 3
    assert point_labels[0].tolist() == [[1, 1, 1]] and point_labels[1].tolist() == [[-10, -10, -10]]


def test_prompted_loss_matches_its_definition():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 1, 4, 4, generator=generator)
    labels = (torch.rand(2, 4, 4, generator=generator) > 0.5).long()
    labels[0, 0, 0] = 255
    iou_predictions = torch.tensor([[0.3], [0.8]])
    loss = prompted_segmentation_loss(logits, iou_predictions, labels, ARGS)
    p, t, valid = logits[:, 0].sigmoid(), (labels == 1).float(), (labels != 255).float()
    ce = -(t * p.log() + (1 - t) * (1 - p).log())
    p_t = torch.where(t == 1, p, 1 - p)
    alpha = torch.where(t == 1, 0.8, 0.2)
    focal = (alpha * (1 - p_t) ** 2 * ce * valid).sum() / valid.sum()
    dice = 1 - (2 * (p * t * valid).sum((1, 2)) + 1) / ((p * valid).sum((1, 2)) + (t * valid).sum((1, 2)) + 1)
    hard = (logits[:, 0] > 0).float() * valid
    reached = (hard * t).sum((1, 2)) / ((hard + t * valid) > 0).float().sum((1, 2))
    expected = focal + 10 * dice.mean() + ((iou_predictions[:, 0] - reached) ** 2).mean()
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)

"""Adapter model cards (valid metadata and model-index), pushing a run folder to a fake Hub API, and resolving
adapters by path or Hub id offline from a locally built Hub cache."""

from __future__ import annotations

from pathlib import Path
from unittest.mock import create_autospec

import pytest
import torch
import yaml
from huggingface_hub import CommitInfo, HfApi, ModelCard, RepoUrl, constants, get_token
from huggingface_hub.errors import HfHubHTTPError
from huggingface_hub.repocard_data import model_index_to_eval_results
from huggingface_hub.utils import filter_repo_objects, hf_raise_for_status
from peft import PeftModel, get_peft_model, get_peft_model_state_dict
from transformers import SamModel

from sam_peft import ConvLoraConfig, random_sam
from sam_peft.hub import (
    PushAccessError,
    adapter_model_card,
    check_push_access,
    model_card_template,
    push_run,
    resolve_pretrained,
    run_files,
)

try:  # the HTTP client of huggingface_hub: httpx2 from 2.0, httpx in 1.x
    import httpx2 as httpx
except ImportError:  # pragma: no cover
    import httpx


def test_template_lives_in_model_cards():
    assert model_card_template().parent.name == "model_cards"


def test_card_renders_metadata_model_index_and_usage(tmp_path):
    card = adapter_model_card(
        base_model="facebook/sam-vit-base",
        peft_type="CONV_LORA",
        adapter_id="someone/sam-conv-lora-kvasir",
        dataset_name="Kvasir-SEG",
        dataset_id="someone/kvasir-seg",
        eval_split="test",
        metrics={"s_alpha": 0.9123, "mae": 0.0312},
        hyperparameters={"learning_rate": 1e-4, "epochs": 30},
        trainable_parameters=3_624_768,
    )
    card.save(tmp_path / "README.md")
    reloaded = ModelCard.load(tmp_path / "README.md")
    metadata = yaml.safe_load(str(reloaded).split("---")[1])
    assert metadata["library_name"] == "peft" and metadata["base_model"] == "facebook/sam-vit-base"
    assert "conv-lora" in metadata["tags"] and metadata["datasets"] == ["someone/kvasir-seg"]

    name, results = model_index_to_eval_results(metadata["model-index"])
    assert name == "sam-conv-lora-kvasir"
    assert {(r.metric_type, r.metric_value, r.dataset_name, r.dataset_split) for r in results} == {
        ("s_alpha", 0.9123, "Kvasir-SEG", "test"),
        ("mae", 0.0312, "Kvasir-SEG", "test"),
    }
    text = reloaded.text
    assert 'PeftModel.from_pretrained(base, "someone/sam-conv-lora-kvasir")' in text
    assert "import sam_peft" in text and "3,624,768" in text
    assert "| s_alpha | 0.9123 |" in text and "- `learning_rate`: 0.0001" in text


def test_card_without_metrics_has_no_model_index():
    card = adapter_model_card(base_model="facebook/sam-vit-huge", peft_type="CONV_LORA", adapter_id="out/adapter")
    assert "model-index" not in str(card) and "## Evaluation" not in str(card)


# --- pushing a run folder -------------------------------------------------------------------------------------------

REPO_ID = "someone/sam-conv-lora-kvasir"
UPLOADED = {
    "adapter_config.json",
    "adapter_model.safetensors",
    "sam_peft_run.json",
    "README.md",
    "metrics.json",
    "training_curves.png",
    "predictions.png",
}
NOT_UPLOADED = {
    "checkpoints/checkpoint_0/adapter_config.json",
    "checkpoints/checkpoint_0/adapter_model.safetensors",
    "checkpoints/checkpoint_0/optimizer.bin",
    "checkpoints/checkpoint_0/predictions.png",
    "best/adapter_model.safetensors",
    "logs/train/events.out.tfevents.1.host",
    "train.log",
    "notes.txt",
    "adapter_model.safetensors.tmp",
}


def _make_files(root: Path, names: set[str]) -> None:
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"x")


def _all_files(root: Path) -> list[str]:
    return [path.relative_to(root).as_posix() for path in root.rglob("*") if path.is_file()]


def _fake_api() -> HfApi:
    api = create_autospec(HfApi, instance=True)
    api.create_repo.side_effect = lambda repo_id, **_: RepoUrl(f"https://huggingface.co/{repo_id}")
    api.upload_folder.return_value = CommitInfo(
        commit_url=f"https://huggingface.co/{REPO_ID}/commit/{'a' * 40}",
        commit_message="m",
        commit_description="",
        oid="a" * 40,
    )
    return api


def test_push_run_uploads_adapter_card_metrics_and_pngs_only(tmp_path):
    run = tmp_path / "run"
    _make_files(run, UPLOADED | NOT_UPLOADED)
    api = _fake_api()

    url = push_run(run, REPO_ID, private=True, api=api)

    assert url == f"https://huggingface.co/{REPO_ID}/commit/{'a' * 40}"
    api.create_repo.assert_called_once_with(REPO_ID, private=True, exist_ok=True, repo_type="model")
    api.create_branch.assert_not_called()
    api.upload_folder.assert_called_once()
    kwargs = api.upload_folder.call_args.kwargs
    assert kwargs["repo_id"] == REPO_ID and Path(kwargs["folder_path"]) == run and kwargs["revision"] is None
    # upload_folder filters the folder's relative paths with exactly this call
    selected = filter_repo_objects(_all_files(run), allow_patterns=kwargs["allow_patterns"])
    assert set(selected) == UPLOADED
    assert set(run_files(run)) == UPLOADED


def test_push_run_decoder_only_run_to_a_branch(tmp_path):
    run = tmp_path / "run"
    files = {"decoder_model.safetensors", "sam_peft_run.json", "README.md", "metrics.json", "curve[1].png"}
    _make_files(run, files | {"checkpoints/decoder_model.safetensors", "curve1.png.bak"})
    api = _fake_api()

    push_run(run, REPO_ID, revision="v1", commit_message="epoch 30", api=api)

    api.create_branch.assert_called_once_with(REPO_ID, branch="v1", exist_ok=True, repo_type="model")
    kwargs = api.upload_folder.call_args.kwargs
    assert kwargs["revision"] == "v1" and kwargs["commit_message"] == "epoch 30"
    assert set(filter_repo_objects(_all_files(run), allow_patterns=kwargs["allow_patterns"])) == files


def test_push_run_refuses_a_folder_without_weights(tmp_path):
    _make_files(tmp_path, {"README.md", "metrics.json"})
    api = _fake_api()
    with pytest.raises(FileNotFoundError, match="not a finished sam-peft run folder"):
        push_run(tmp_path, REPO_ID, api=api)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        push_run(tmp_path / "missing", REPO_ID, api=api)
    api.create_repo.assert_not_called()
    api.upload_folder.assert_not_called()


# --- pulling by path or Hub id, offline from a local Hub cache ------------------------------------------------------

MAIN_SHA = "1" * 40
V1_SHA = "2" * 40


@pytest.fixture
def offline_cache(tmp_path, monkeypatch) -> Path:
    """An empty Hub cache in tmp_path, with HF_HUB_OFFLINE=1 (environment and huggingface_hub's constants)."""
    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    # huggingface_hub reads both at import time
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


def _cache_repo(cache: Path, repo_id: str, refs: dict[str, str]) -> dict[str, Path]:
    """The Hub cache layout of a model repository: `refs/<name>` holding commit ids, `snapshots/<commit>/`."""
    storage = cache / f"models--{repo_id.replace('/', '--')}"
    (storage / "refs").mkdir(parents=True)
    snapshots = {}
    for ref, sha in refs.items():
        (storage / "refs" / ref).write_text(sha)
        snapshots[ref] = storage / "snapshots" / sha
        snapshots[ref].mkdir(parents=True, exist_ok=True)
    return snapshots


def _tiny_adapter(seed: int):
    """A tiny Conv-LoRA PEFT model with non-zero B (a fresh adapter's B is zero)."""
    model = get_peft_model(random_sam("tiny", seed=0), ConvLoraConfig())
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator))
    return model


def test_pull_by_repo_id_offline_with_subfolder_loads_the_adapter(offline_cache):
    snapshots = _cache_repo(offline_cache, REPO_ID, {"main": MAIN_SHA})
    adapter = _tiny_adapter(seed=1)
    adapter.save_pretrained(snapshots["main"] / "kvasir")
    adapter.save_pretrained(snapshots["main"])

    assert resolve_pretrained(REPO_ID) == snapshots["main"]
    resolved = resolve_pretrained(REPO_ID, subfolder="kvasir")
    assert resolved == snapshots["main"] / "kvasir"

    loaded = PeftModel.from_pretrained(random_sam("tiny", seed=0), resolved)
    expected, actual = get_peft_model_state_dict(adapter), get_peft_model_state_dict(loaded)
    assert expected.keys() == actual.keys() and any("lora_B" in key for key in expected)
    assert all(torch.equal(expected[key], actual[key]) for key in expected)


def test_pull_by_revision_and_commit_offline(offline_cache):
    snapshots = _cache_repo(offline_cache, REPO_ID, {"main": MAIN_SHA, "v1": V1_SHA})
    for snapshot in snapshots.values():
        (snapshot / "sub").mkdir()
    assert resolve_pretrained(REPO_ID, revision="v1") == snapshots["v1"]
    assert resolve_pretrained(REPO_ID, revision=V1_SHA, subfolder="sub") == snapshots["v1"] / "sub"
    with pytest.raises(FileNotFoundError, match=r"HF_HUB_OFFLINE is set .*revision v2"):
        resolve_pretrained(REPO_ID, revision="v2")


def test_pull_errors_say_what_is_missing(offline_cache, tmp_path):
    snapshots = _cache_repo(offline_cache, REPO_ID, {"main": MAIN_SHA})
    (snapshots["main"] / "kvasir").mkdir()
    with pytest.raises(FileNotFoundError, match=r"HF_HUB_OFFLINE is set .* not in the local Hub cache"):
        resolve_pretrained("someone/never-downloaded")
    with pytest.raises(FileNotFoundError, match=r"Subfolder 'isic' is absent .*subfolders: kvasir"):
        resolve_pretrained(REPO_ID, subfolder="isic")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_pretrained(tmp_path / "no" / "such" / "run")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_pretrained("./outputs/no-such-run")
    (tmp_path / "file.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="is a file"):
        resolve_pretrained(tmp_path / "file.json")


def test_pull_local_folder_as_is(tmp_path):
    (tmp_path / "run" / "kvasir").mkdir(parents=True)
    assert resolve_pretrained(tmp_path / "run") == tmp_path / "run"
    assert resolve_pretrained(str(tmp_path / "run"), subfolder="kvasir") == tmp_path / "run" / "kvasir"
    with pytest.raises(FileNotFoundError, match=r"absent from local folder .*subfolders: kvasir"):
        resolve_pretrained(tmp_path / "run", subfolder="isic")


# --- checking push access before training ---------------------------------------------------------------------------


@pytest.fixture
def online(monkeypatch):
    """Not offline, and a token in HF_TOKEN (fake: only the fake APIs below see it)."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # huggingface_hub reads it at import time
    monkeypatch.delenv("HF_OIDC_RESOURCE", raising=False)
    monkeypatch.setenv("HF_TOKEN", "hf_fake_token")


def _hub_error(status: int, method: str = "GET", path: str = "/api/whoami-v2") -> Exception:
    """The error huggingface_hub raises for an HTTP `status` answer (built by its own `hf_raise_for_status`)."""
    response = httpx.Response(status, request=httpx.Request(method, f"{constants.ENDPOINT}{path}"))
    with pytest.raises(HfHubHTTPError) as raised:
        hf_raise_for_status(response)
    return raised.value


def _whoami(role: str | None = "write", *, orgs=(), scoped=None, auth_type: str = "access_token") -> dict:
    """A `HfApi.whoami()` answer for user `someone`, member of `orgs`, with a token of `role`."""
    access_token = {"displayName": "test-token", "role": role}
    if scoped is not None:
        access_token["fineGrained"] = {"scoped": scoped, "global": ["discussion.write", "post.write"]}
    return {
        "type": "user",
        "name": "someone",
        "orgs": [{"type": "org", "name": org} for org in orgs],
        "auth": {"type": auth_type, "accessToken": access_token} if role else {"type": auth_type},
    }


def _whoami_api(answer=None, *, error: Exception | None = None) -> HfApi:
    api = _fake_api()
    if error is not None:
        api.whoami.side_effect = error
    else:
        api.whoami.return_value = answer
    return api


def test_push_access_offline(online, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    api = _whoami_api(_whoami())
    with pytest.raises(PushAccessError, match=r"HF_HUB_OFFLINE is set; unset it or train without --push_to_hub"):
        check_push_access(REPO_ID, api=api)
    api.whoami.assert_not_called()


@pytest.mark.parametrize("repo_id", ["someone/sam/kvasir", "some one/sam", "someone/sam--kvasir", ""])
def test_push_access_invalid_repo_id(online, repo_id):
    api = _whoami_api(_whoami())
    with pytest.raises(ValueError, match="not a valid Hub repository id"):
        check_push_access(repo_id, api=api)
    api.whoami.assert_not_called()


def test_push_access_no_token(online, monkeypatch, tmp_path):
    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "token"))  # read from HF_HOME at import time
    assert get_token() is None
    api = _whoami_api(_whoami())
    with pytest.raises(PushAccessError, match=r"no token|none was found") as raised:
        check_push_access(REPO_ID, api=api)
    assert "`hf auth login`" in str(raised.value) and "HF_TOKEN" in str(raised.value)
    api.whoami.assert_not_called()


def test_push_access_token_rejected(online):
    api = _whoami_api(error=_hub_error(401))
    with pytest.raises(PushAccessError, match="token rejected") as raised:
        check_push_access(REPO_ID, api=api)
    assert "hf auth login" in str(raised.value)
    api.whoami.assert_called_once_with(token="hf_fake_token")


@pytest.mark.parametrize(
    "error", [httpx.ConnectError("[Errno -3] Temporary failure in name resolution"), _hub_error(503)], ids=str
)
def test_push_access_hub_unreachable(online, error):
    with pytest.raises(PushAccessError, match="cannot reach the Hub"):
        check_push_access(REPO_ID, api=_whoami_api(error=error))


def test_push_access_read_token(online):
    api = _whoami_api(_whoami("read"))
    with pytest.raises(PushAccessError, match="no write access to someone"):
        check_push_access(REPO_ID, api=api)
    api.create_repo.assert_not_called()


def test_push_access_other_namespace(online):
    api = _whoami_api(_whoami("write", orgs=["my-lab"]))
    with pytest.raises(PushAccessError, match="no write access to other-lab"):
        check_push_access("other-lab/sam-adapter", api=api)
    with pytest.raises(PushAccessError, match="no write access to someone-else"):
        check_push_access("someone-else/sam-adapter", api=api)
    check_push_access("my-lab/sam-adapter", api=api)
    api.create_repo.assert_not_called()


@pytest.mark.parametrize("repo_id", [REPO_ID, "sam-conv-lora-kvasir", "Someone/sam"])
def test_push_access_write_token_own_namespace(online, repo_id):
    api = _whoami_api(_whoami("write"))
    assert check_push_access(repo_id, api=api) is None
    api.create_repo.assert_not_called()
    api.upload_folder.assert_not_called()


def test_push_access_token_of_the_api_object(online, monkeypatch):
    monkeypatch.delenv("HF_TOKEN")
    api = _whoami_api(_whoami("write"))
    api.token = "hf_api_token"
    check_push_access(REPO_ID, api=api)
    api.whoami.assert_called_once_with(token="hf_api_token")


def _scope(entity_type: str, name: str, *permissions: str) -> dict:
    return {"entity": {"_id": "0" * 24, "type": entity_type, "name": name}, "permissions": list(permissions)}


@pytest.mark.parametrize(
    ("repo_id", "scoped", "allowed"),
    [
        (REPO_ID, [_scope("user", "someone", "repo.content.read", "repo.write")], True),
        (REPO_ID, [_scope("user", "someone", "repo.content.read")], False),
        (REPO_ID, [_scope("model", REPO_ID, "repo.write")], True),
        (REPO_ID, [_scope("model", "someone/other", "repo.write")], False),
        ("my-lab/sam", [_scope("org", "my-lab", "repo.write")], True),
        ("my-lab/sam", [_scope("user", "someone", "repo.write")], False),
        (REPO_ID, [], False),
    ],
)
def test_push_access_fine_grained_token(online, repo_id, scoped, allowed):
    api = _whoami_api(_whoami("fineGrained", orgs=["my-lab"], scoped=scoped))
    if allowed:
        check_push_access(repo_id, api=api)
    else:
        with pytest.raises(PushAccessError, match=f"no write access to {repo_id.split('/')[0]}"):
            check_push_access(repo_id, api=api)
    api.create_repo.assert_not_called()


def test_push_access_falls_back_on_create_repo(online):
    """An answer that does not say (an OAuth token without a role here) -> create_repo(exist_ok=True) decides."""
    api = _whoami_api(_whoami(None, auth_type="oauth"))
    check_push_access(REPO_ID, api=api)
    api.create_repo.assert_called_once_with(REPO_ID, private=False, exist_ok=True, repo_type="model")

    api.create_repo.side_effect = _hub_error(403, "POST", "/api/repos/create")
    with pytest.raises(PushAccessError, match="no write access to my-lab"):
        check_push_access("my-lab/sam", private=True, api=api)
    api.create_repo.assert_called_with("my-lab/sam", private=True, exist_ok=True, repo_type="model")


# --- sam-peft's card on a plain save_pretrained -------------------------------------------------------------------


def _python_block(card_text: str) -> str:
    return card_text.split("```python\n", 1)[1].split("```", 1)[0]


@pytest.mark.parametrize("variant", ["tiny", "sam2-tiny"])
def test_plain_save_pretrained_writes_a_card_whose_snippet_loads_the_adapter(tmp_path, variant):
    """A multi-class head of SAM or SAM 2: the card's snippet builds the same head (labels and queries)."""
    from sam_peft.modeling import PROMPT_FREE_CLASSES

    base = random_sam(variant)
    base.save_pretrained(tmp_path / "base")
    head = PROMPT_FREE_CLASSES[base.config.model_type]
    model = head.from_pretrained(tmp_path / "base", num_labels=3, num_mask_tokens=4)
    adapted = get_peft_model(model, ConvLoraConfig(num_experts=2)).eval()
    adapted.save_pretrained(tmp_path / "adapter")
    card = ModelCard.load(tmp_path / "adapter" / "README.md")
    assert "# Model Card for Model ID" not in card.text  # peft's generic card is replaced
    assert {"sam-peft", "conv-lora", "transformers"} <= set(card.data.tags)
    assert card.data.library_name == "peft" and card.data.base_model == str(tmp_path / "base")
    snippet = _python_block(card.text)
    assert f"sam_peft.{head.__name__}.from_pretrained(" in snippet and "num_labels=3, num_mask_tokens=4" in snippet
    trainable = sum(p.numel() for p in adapted.parameters() if p.requires_grad)
    assert f"({trainable:,} parameters)" in card.text

    namespace: dict = {}
    exec(snippet, namespace)  # the card's snippet, as a user copies it
    pixel_values = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        torch.testing.assert_close(
            namespace["model"](pixel_values=pixel_values).logits, adapted(pixel_values=pixel_values).logits
        )


def test_plain_save_of_a_prompted_adapter_and_a_users_own_card(tmp_path):
    random_sam("tiny").save_pretrained(tmp_path / "base")
    adapted = get_peft_model(SamModel.from_pretrained(tmp_path / "base"), ConvLoraConfig(num_experts=2))
    adapted.save_pretrained(tmp_path / "adapter")
    snippet = _python_block((tmp_path / "adapter" / "README.md").read_text())
    namespace: dict = {}
    exec(snippet, namespace)
    assert type(namespace["base"]).__name__ == "SamModel" and isinstance(namespace["model"], PeftModel)

    # a card the user wrote is kept; a loading note is added once
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "README.md").write_text("---\nlicense: mit\n---\n\n# My polyp adapter\n\nNotes.\n")
    for _ in range(2):
        adapted.save_pretrained(tmp_path / "mine")
    text = (tmp_path / "mine" / "README.md").read_text()
    assert "# My polyp adapter\n\nNotes." in text and "license: mit" in text
    assert text.count("## Loading with sam-peft") == 1 and "`import sam_peft` before" in text


def test_card_of_a_run_without_adapter_loads_it_with_its_own_snippet(tmp_path):
    """Decoder-only training stores weights of the base model, not a PEFT adapter: the card's snippet loads the run
    with load_trained, and running it gives the trained model."""
    import re

    from sam_peft.training import ModelArguments, build_model, load_trained, save_trained, write_run_file

    random_sam("tiny", seed=0).save_pretrained(tmp_path / "base")
    args = ModelArguments(base_model=str(tmp_path / "base"), method="decoder_only")
    model = build_model(args)
    with torch.no_grad():
        model.mask_decoder.iou_token.weight.add_(1.0)  # trained weights that differ from the base's
    save_trained(model, tmp_path / "run")
    write_run_file(tmp_path / "run", args, image_size=128, training={"epochs": 1, "steps": 1})
    card = adapter_model_card(
        base_model=args.base_model,
        peft_type="DECODER_ONLY",
        adapter_id=str(tmp_path / "run"),
        trainable_parameters=7,
        peft_adapter=False,
    )
    text = str(card)
    assert "PeftModel" not in text and "fine-tune (sam-peft)" in text and "(7 parameters)" in text
    snippet = re.search(r"```python\n(.*?)```", text, flags=re.S).group(1)
    namespace: dict = {}
    exec(snippet, namespace)
    loaded = namespace["model"]
    expected = load_trained(tmp_path / "run")
    pixels = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        assert torch.equal(loaded(pixel_values=pixels).logits, expected(pixel_values=pixels).logits)
    assert torch.equal(loaded.mask_decoder.iou_token.weight, model.mask_decoder.iou_token.weight)

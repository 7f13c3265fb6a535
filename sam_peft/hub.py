"""The Hugging Face Hub: adapter model cards, pushing a run folder, and resolving adapters by id or path.

`resolve_pretrained` turns a Hub id into a local snapshot folder through `huggingface_hub.snapshot_download`, so it
works offline from the cache (`HF_HUB_OFFLINE=1`), and picks the subfolder itself: peft 0.21.2 looks for
`sub/sub/adapter_model.safetensors` when offline with `subfolder=`, so load with
`PeftModel.from_pretrained(model, resolve_pretrained(repo_id, subfolder="sub"))`.
"""

from __future__ import annotations

import fnmatch
import logging
import math
import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from huggingface_hub import (
    CommitInfo,
    EvalResult,
    HfApi,
    ModelCard,
    ModelCardData,
    RepoUrl,
    constants,
    get_token,
    snapshot_download,
)
from huggingface_hub.errors import (
    HfHubHTTPError,
    HFValidationError,
    IncompleteSnapshotError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.errors import HTTPError as _TransportHTTPError  # httpx's (requests' before 1.0) base error
from huggingface_hub.utils import validate_repo_id
from safetensors import safe_open

from .modeling.methods import method_of_peft_type

logger = logging.getLogger(__name__)

# peft's card for an adapter saved without a card of its own: huggingface_hub's default template, filled by
# `PeftModel.save_pretrained`; `write_card_on_save` replaces it with sam-peft's card
GENERIC_CARD_HEADING = "# Model Card for Model ID"
LOADING_NOTE = (
    "\n\n## Loading with sam-peft\n\nThis {method} adapter is a sam-peft tuner type: `pip install sam-peft` and "
    "`import sam_peft` before `PeftModel.from_pretrained`, else peft fails with `KeyError: '{peft_type}'`.\n"
)
TEMPLATE_NAME = "adapter.md"


def model_card_template() -> Path:
    """Path of the adapter card template: `model_cards/` of a source checkout, else the installed copy."""
    candidates = (
        Path(__file__).resolve().parents[1] / "model_cards" / TEMPLATE_NAME,
        Path(sys.prefix) / "share" / "sam-peft" / "model_cards" / TEMPLATE_NAME,
    )
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"sam-peft's model card template {TEMPLATE_NAME!r} is missing; looked in {candidates}.")


def adapter_model_card(
    *,
    base_model: str,
    peft_type: str,
    adapter_id: str,
    num_labels: int = 1,
    dataset_name: str | None = None,
    dataset_id: str | None = None,
    eval_split: str | None = None,
    metrics: Mapping[str, float] | None = None,
    hyperparameters: Mapping[str, Any] | None = None,
    trainable_parameters: int | None = None,
    trained_modules: str | None = "the mask decoder",
    base_class: str = "SamForSemanticSegmentation",
    num_mask_tokens: int | None = None,
    baseline: Mapping[str, float] | None = None,
    figure: tuple[str, str] | None = None,
    peft_adapter: bool = True,
) -> ModelCard:
    """Render the card of an adapter: metadata (`library_name: peft`, `base_model`, `model-index` built from
    `metrics`), a usage snippet, the metrics table, the hyperparameters and the method.

    Metrics are fractions as sam-peft's metrics return them (e.g. `{"s_alpha": 0.91, "mae": 0.03}`). `base_class`
    is the class the adapter was trained on: a prompt-free head (`SamForSemanticSegmentation`,
    `Sam2ForSemanticSegmentation`, `Sam3TrackerForSemanticSegmentation`; `num_labels` and a non-default
    `num_mask_tokens` go into the snippet), or transformers' `SamModel` / `SamHQModel` / `Sam2Model` (prompted).
    `baseline` (the base model's values of the same metrics) adds a column beside `metrics`; `figure`, a
    `(file name, caption)` of a picture stored beside the card, is shown under the table. `peft_adapter=False`
    (decoder-only training and other runs that store weights of the base model, not an adapter) gives the snippet
    that loads the run with `sam_peft.training.load_trained`.
    """
    method = method_of_peft_type(peft_type)
    method_name = peft_type if method is None else method.title
    method_description = f"A `{peft_type}` adapter." if method is None else method.description
    if not base_class.endswith("ForSemanticSegmentation"):
        task = "promptable segmentation (points and boxes)"
    else:
        task = "binary segmentation" if num_labels == 1 else f"{num_labels}-class semantic segmentation"
    eval_results = [
        EvalResult(
            task_type="image-segmentation",
            task_name=task,
            dataset_type=dataset_id or dataset_name or "custom",
            dataset_name=dataset_name or dataset_id or "custom",
            dataset_split=eval_split,
            metric_type=name,
            metric_name=name,
            metric_value=float(value),
        )
        for name, value in (metrics or {}).items()
    ]
    model_name = adapter_id.rstrip("/").split("/")[-1]
    card_data = ModelCardData(
        library_name="peft",
        base_model=base_model,
        pipeline_tag="image-segmentation",
        tags=["sam-peft", peft_type.lower().replace("_", "-"), "segment-anything", "image-segmentation"],
        datasets=[dataset_id] if dataset_id else None,
        model_name=model_name,
        eval_results=eval_results or None,
    )
    return ModelCard.from_template(
        card_data,
        template_path=str(model_card_template()),
        model_name=model_name,
        method_name=method_name,
        method_description=method_description,
        peft_type=peft_type,
        base_model=base_model,
        adapter_id=adapter_id,
        num_labels=num_labels,
        task_description=task,
        dataset_name=dataset_name,
        eval_split=eval_split,
        metrics=dict(metrics or {}),
        hyperparameters=dict(hyperparameters or {}),
        trainable_parameters=f"{trainable_parameters:,}" if trainable_parameters is not None else "its trained",
        trained_modules=trained_modules,
        base_class=base_class,
        num_mask_tokens=num_mask_tokens,
        baseline=dict(baseline or {}),
        figure=figure[0] if figure else None,
        figure_caption=figure[1] if figure else None,
        peft_adapter=peft_adapter,
    )


def write_card_on_save(config: Any, directory: str | os.PathLike, auto_mapping: Mapping[str, str] | None) -> None:
    """Gives an adapter saved with a plain `save_pretrained` sam-peft's card (a `CONFIG_SAVE_HOOKS` hook).

    peft writes `README.md` before the weights and config; when it is peft's generic card, it is replaced by
    `adapter_model_card` for what the folder holds (base model and class, task head read from the saved weights,
    trainable parameter count), keeping peft's tags. Any other card (the user's, or sam-peft's) is kept; one that
    never says `import sam_peft` gets a short loading section appended. A folder without a card is left alone.
    """
    folder = Path(directory)
    path = folder / "README.md"
    if not path.is_file():
        return
    existing = ModelCard.load(path)
    peft_type = str(getattr(config.peft_type, "value", config.peft_type))
    if GENERIC_CARD_HEADING not in existing.text:
        if "import sam_peft" not in existing.text:
            method = method_of_peft_type(peft_type)
            title = peft_type if method is None else method.title
            existing.text = existing.text.rstrip("\n") + LOADING_NOTE.format(method=title, peft_type=peft_type)
            existing.save(path)
        return
    weights = _saved_tensor_shapes(folder / "adapter_model.safetensors")
    head = _decoder_head(weights)
    card = adapter_model_card(
        base_model=config.base_model_name_or_path or "facebook/sam-vit-base",
        peft_type=peft_type,
        adapter_id=str(folder.resolve()),
        num_labels=head[0] if head else 1,
        num_mask_tokens=head[1] if head and head[0] > 1 else None,
        trainable_parameters=sum(math.prod(shape) for shape in weights.values()) if weights else None,
        trained_modules="the mask decoder" if head else None,
        base_class=(auto_mapping or {}).get("base_model_class", "SamModel"),
    )
    card.data.tags = sorted(set(card.data.tags or ()) | set(existing.data.tags or ()))
    card.save(path)


def _saved_tensor_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor of a safetensors file (read from its header only), or {} without one."""
    if not path.is_file():
        return {}
    with safe_open(path, framework="pt") as file:
        return {name: tuple(file.get_slice(name).get_shape()) for name in file.keys()}  # noqa: SIM118


def _decoder_head(shapes: Mapping[str, tuple[int, ...]]) -> tuple[int, int] | None:
    """`(num_labels, num_mask_tokens)` of a saved prompt-free mask decoder, or None when none is saved."""
    tokens = next((shape for name, shape in shapes.items() if name.endswith("mask_decoder.mask_tokens.weight")), None)
    if tokens is None:
        return None
    classifier = next((s for name, s in shapes.items() if name.endswith("mask_decoder.class_predictor.weight")), None)
    return (1 if classifier is None else classifier[0] - 1), tokens[0]


# Files of a run folder that `push_run` uploads, from its top level only (never checkpoints/ or logs).
RUN_FILE_PATTERNS = (
    "adapter_config.json",
    "adapter_model.safetensors",
    "decoder_model.safetensors",
    "sam_peft_run.json",
    "README.md",
    "metrics.json",
    "*.png",
)
# A run folder holds at least one of these: PEFT adapter weights, or the trained decoder of a decoder_only run.
WEIGHT_FILES = ("adapter_model.safetensors", "decoder_model.safetensors")


def run_files(output_dir: str | os.PathLike) -> list[str]:
    """Names of the files of the run folder `output_dir` that `push_run` uploads (top level, sorted).

    Raises:
        FileNotFoundError: when `output_dir` is not a folder, or holds no adapter or decoder weights.
    """
    folder = Path(output_dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"Run folder {folder} does not exist.")
    names = sorted(
        path.name
        for path in folder.iterdir()
        if path.is_file() and any(fnmatch.fnmatchcase(path.name, pattern) for pattern in RUN_FILE_PATTERNS)
    )
    if not any(name in names for name in WEIGHT_FILES):
        raise FileNotFoundError(
            f"{folder} holds none of {', '.join(WEIGHT_FILES)}: it is not a finished sam-peft run folder."
        )
    return names


def _literal_pattern(name: str) -> str:
    """An fnmatch pattern matching exactly `name` (its wildcard characters bracketed)."""
    return re.sub(r"([*?\[])", r"[\1]", name)


def push_run(
    output_dir: str | os.PathLike,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    commit_message: str = "Upload sam-peft adapter, model card and metrics",
    api: HfApi | None = None,
) -> str:
    """Upload a training run to the Hub model repository `repo_id`, creating it if needed.

    Uploads the top-level files of `run_files(output_dir)`: the adapter (`adapter_config.json`,
    `adapter_model.safetensors`, or `decoder_model.safetensors`), `sam_peft_run.json`, the card `README.md`,
    `metrics.json` and the PNGs; nothing else (no checkpoints, no logs). A `revision` branch is created if absent.

    Returns:
        The URL of the commit (its last component is the commit id).
    """
    names = run_files(output_dir)
    if "README.md" not in names:
        logger.warning("%s has no README.md: the Hub repository %s gets no model card.", output_dir, repo_id)
    api = api if api is not None else HfApi()
    repo_url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    if isinstance(repo_url, RepoUrl):
        repo_id = repo_url.repo_id
    if revision is not None and revision != constants.DEFAULT_REVISION:
        api.create_branch(repo_id, branch=revision, exist_ok=True, repo_type="model")
    commit = api.upload_folder(
        repo_id=repo_id,
        folder_path=str(output_dir),
        repo_type="model",
        revision=revision,
        commit_message=commit_message,
        allow_patterns=[_literal_pattern(name) for name in names],
    )
    return commit.commit_url if isinstance(commit, CommitInfo) else str(commit)


class PushAccessError(ValueError):
    """`check_push_access` found that pushing to the Hub would fail; the message names the problem and the fix."""


# Roles of classic (not fine-grained) access tokens, as `HfApi.whoami()["auth"]["accessToken"]["role"]` gives them.
_WRITE_ROLES = ("write", "admin")
_PUSH_LATER = "train without --push_to_hub and push the run folder later with sam_peft.hub.push_run"


def check_push_access(repo_id: str, *, private: bool = False, api: HfApi | None = None) -> None:
    """Check, before a long training run, that its folder can be pushed to the Hub model repository `repo_id`.

    Checks, in this order, and raises `PushAccessError` (a `ValueError`) at the first that fails:

    1. the Hub is not in offline mode (`huggingface_hub.constants.is_offline_mode()`, i.e. `HF_HUB_OFFLINE`);
    2. `repo_id` is a valid repository id (`huggingface_hub.utils.validate_repo_id`);
    3. there is a token: `api.token` when the `HfApi` was built with one, else `huggingface_hub.get_token()`
       (`HF_TOKEN`, then the token saved by `hf auth login`);
    4. the Hub accepts it: `api.whoami()` (HTTP 401: token rejected; connection errors, timeouts and HTTP 5xx: the
       Hub cannot be reached);
    5. the token can write to the namespace of `repo_id` (its part before `/`, else the token's user), from the
       `whoami` answer: a `read` token cannot push; a `write`/`admin` token can push to its user's namespace and to
       the organizations in `orgs` (unless `whoami` lists the user as a `read` member there); a `fineGrained` token
       needs `repo.write` on the user or organization of the namespace, or on the model repository `repo_id` itself.
       When the answer does not say (another role, an OAuth token, an unexpected layout), it falls back to
       `api.create_repo(repo_id, private=private, exist_ok=True)`, as `push_run` does anyway (it leaves an existing
       repository as it is, and creates a missing one now rather than after training), and maps HTTP 403 to no
       write access.

    Returns None when pushing should work; it cannot rule out everything (a network outage during training).
    """
    if constants.is_offline_mode():
        raise PushAccessError(
            "push_to_hub needs the Hub but HF_HUB_OFFLINE is set; unset it or train without --push_to_hub and push "
            "later with sam_peft.hub.push_run."
        )
    if not _is_repo_id(repo_id):
        raise PushAccessError(
            f"{repo_id!r} is not a valid Hub repository id; use 'namespace/name' (letters, digits, '-', '_', '.')."
        )
    api = api if api is not None else HfApi()
    api_token = getattr(api, "token", None)  # HfApi(token=...) wins over the environment, as in HfApi's own calls
    if isinstance(api_token, str):
        token = api_token
    elif api_token is False:  # HfApi(token=False) sends no token
        token = None
    else:
        token = get_token()
    if not token:
        raise PushAccessError(
            "push_to_hub needs a Hugging Face token with write access and none was found; run `hf auth login` or "
            f"set HF_TOKEN (https://huggingface.co/settings/tokens), or {_PUSH_LATER}."
        )
    try:
        info = api.whoami(token=token)
    except (HfHubHTTPError, _TransportHTTPError, ConnectionError, TimeoutError) as error:
        raise _access_error(error, "check the token") from error

    user = info.get("name")
    namespace = repo_id.split("/")[0] if "/" in repo_id else user
    access = _token_can_write(info, namespace, repo_id)
    if access is None:
        try:
            api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        except (HfHubHTTPError, _TransportHTTPError, ConnectionError, TimeoutError) as error:
            raise _access_error(error, f"create {repo_id!r}", namespace=namespace) from error
    elif not access:
        token_name = ((info.get("auth") or {}).get("accessToken") or {}).get("displayName")
        raise PushAccessError(
            f"no write access to {namespace}: the token{f' {token_name!r}' if token_name else ''} of {user!r} "
            f"cannot create or write to {repo_id!r}. Use a token with write access to {namespace} (`hf auth login` "
            f"or HF_TOKEN), or push to a namespace you can write to (--hub_model_id {user}/<name>)."
        )


def _token_can_write(info: Mapping[str, Any], namespace: str | None, repo_id: str) -> bool | None:
    """Whether the `HfApi.whoami()` answer `info` can write to `namespace` and `repo_id`; None if it does not say."""
    if not namespace:
        return None
    key = namespace.casefold()
    access_token = (info.get("auth") or {}).get("accessToken") or {}
    role = access_token.get("role")
    if role == "read":
        return False
    if role in _WRITE_ROLES:
        if key == str(info.get("name", "")).casefold():
            return True
        orgs = {str(org.get("name", "")).casefold(): org for org in info.get("orgs") or ()}
        return key in orgs and orgs[key].get("roleInOrg") != "read"
    if role == "fineGrained":
        scoped = (access_token.get("fineGrained") or {}).get("scoped")
        if not isinstance(scoped, list):
            return None
        full_id = repo_id if "/" in repo_id else f"{namespace}/{repo_id}"
        targets = {("user", key), ("org", key), ("model", full_id.casefold())}
        return any(
            (entity.get("type"), str(entity.get("name", "")).casefold()) in targets
            and "repo.write" in (entry.get("permissions") or ())
            for entry in scoped
            for entity in [entry.get("entity") or {}]
        )
    return None


def _access_error(error: Exception, action: str, *, namespace: str | None = None) -> PushAccessError:
    """A `PushAccessError` for `error`, raised by the Hub call that tried to `action`."""
    status = error.response.status_code if isinstance(error, HfHubHTTPError) else None
    if status == 401:
        return PushAccessError(
            f"the Hub rejected the token (HTTP 401: token rejected) when trying to {action}; run `hf auth login "
            "--force` with a valid token that has write access, or set HF_TOKEN to one."
        )
    if status == 403 and namespace:
        return PushAccessError(
            f"no write access to {namespace} (HTTP 403 when trying to {action}); use a token with write access to "
            f"{namespace} (`hf auth login` or HF_TOKEN), or push to a namespace you can write to."
        )
    if status is None or status >= 500:
        return PushAccessError(
            f"cannot reach the Hub ({constants.ENDPOINT}) to {action}: {error}. Check the network or proxy "
            f"(HF_ENDPOINT), or {_PUSH_LATER}."
        )
    return PushAccessError(f"the Hub refused to {action} (HTTP {status}): {error}. Fix that, or {_PUSH_LATER}.")


def _is_repo_id(name: str) -> bool:
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def resolve_pretrained(
    name_or_path: str | os.PathLike,
    *,
    subfolder: str | None = None,
    revision: str | None = None,
    token: str | bool | None = None,
) -> Path:
    """The local folder of an adapter (or model) given as a local path or a Hub repository id.

    An existing local folder wins over a Hub id of the same name and is returned as is (`revision` and `token`
    apply to Hub ids only). A Hub id goes through
    `huggingface_hub.snapshot_download` (only `subfolder`'s files when given), so with `HF_HUB_OFFLINE=1` it is
    served from the local cache. Returns `<folder>/<subfolder>` when `subfolder` is given.

    Raises:
        FileNotFoundError: a local path that does not exist (or is not a folder); a Hub id that is not in the local
            cache while offline (or the Hub is unreachable), or that is not a repository you can access; a
            revision the repository lacks; a subfolder that is absent.
    """
    text = os.fspath(name_or_path)
    path = Path(text).expanduser()
    if path.exists():
        if not path.is_dir():
            raise FileNotFoundError(f"{path} is a file; expected the folder holding adapter_config.json.")
        folder, where = path, f"local folder {path}"
    elif not isinstance(name_or_path, str) or not _is_repo_id(text):
        raise FileNotFoundError(f"Local folder {path} does not exist (and {text!r} is not a Hub repository id).")
    else:
        folder = _snapshot(text, subfolder=subfolder, revision=revision, token=token)
        where = f"Hub repository {text!r} (revision {revision or constants.DEFAULT_REVISION}, snapshot {folder})"
    if not subfolder:
        return folder
    target = folder / subfolder
    if not target.is_dir():
        children = folder.iterdir() if folder.is_dir() else ()
        present = sorted(child.name for child in children if child.is_dir() and not child.name.startswith("."))
        raise FileNotFoundError(
            f"Subfolder {subfolder!r} is absent from {where}; its subfolders: {', '.join(present) or 'none'}."
        )
    return target


def _snapshot(repo_id: str, *, subfolder: str | None, revision: str | None, token: str | bool | None) -> Path:
    """`snapshot_download(repo_id)` (only `subfolder`'s files when given), with errors that say what to do."""
    label = f"{repo_id!r} (revision {revision or constants.DEFAULT_REVISION})"
    download = f"hf download {repo_id}" + (f" --revision {revision}" if revision else "")
    allow_patterns = f"{subfolder.strip('/')}/*" if subfolder else None
    try:
        return Path(snapshot_download(repo_id, revision=revision, token=token, allow_patterns=allow_patterns))
    except IncompleteSnapshotError:
        raise
    except LocalEntryNotFoundError as error:
        if constants.is_offline_mode():
            reason = f"HF_HUB_OFFLINE is set and {label} is not in the local Hub cache {constants.HF_HUB_CACHE}"
        else:
            reason = f"the Hub could not be reached and {label} is not in the local Hub cache {constants.HF_HUB_CACHE}"
        raise FileNotFoundError(
            f"{repo_id!r} is not a local folder, and {reason}. Download it once online "
            f"(`{download}`), or point HF_HUB_CACHE at a cache that holds it."
        ) from error
    except RevisionNotFoundError as error:
        raise FileNotFoundError(f"Hub repository {repo_id!r} has no revision {revision!r}.") from error
    except RepositoryNotFoundError as error:
        raise FileNotFoundError(
            f"{repo_id!r} is neither a local folder nor a Hub repository you can access (private or gated "
            "repositories need a token: `hf auth login` or token=...)."
        ) from error

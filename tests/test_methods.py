"""The registry of methods (`sam_peft.modeling.methods`) drives the recipe's choices, the models it builds, the
cache check and the model cards."""

from __future__ import annotations

import pytest
from peft import PeftModel

from sam_peft.hub import adapter_model_card
from sam_peft.modeling.methods import METHODS, adapter_peft_type, get_method, method_of_peft_type, recipe_methods
from sam_peft.training import build_model
from sam_peft.training.arguments import TRAINED_METHODS, ModelArguments, parse_args
from sam_peft.training.embedding_cache import frozen_vision_encoder


def test_every_method_is_trained_by_one_recipe():
    assert set(recipe_methods()) | set(recipe_methods("recipes/continual.py")) == set(METHODS)
    assert set(TRAINED_METHODS) == set(recipe_methods())
    assert "slora" in TRAINED_METHODS  # single-domain; recipes/continual.py trains one per domain
    assert len({method.peft_type for method in METHODS.values()}) == len(METHODS)


def test_an_unknown_method_lists_the_recipes_methods():
    with pytest.raises(ValueError, match="Unknown method 'dora'; expected one of") as error:
        ModelArguments(method="dora")
    for name in TRAINED_METHODS:
        assert repr(name) in str(error.value)


def test_a_method_of_another_recipe_names_that_recipe(monkeypatch):
    from sam_peft.modeling.methods import CONTINUAL_RECIPE, Method

    other = Method(name="samcl", title="SAMCL", peft_type="SAMCL", description="", recipe=CONTINUAL_RECIPE)
    monkeypatch.setitem(METHODS, "samcl", other)
    with pytest.raises(ValueError, match=r"^SAMCL \('samcl'\) is trained by recipes/continual.py; recipes/train.py"):
        get_method("samcl")
    assert get_method("samcl", CONTINUAL_RECIPE) is other


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory):
    from sam_peft import random_sam

    path = tmp_path_factory.mktemp("base") / "tiny"
    random_sam("tiny", seed=0).save_pretrained(path)
    return str(path)


# the arguments that a method needs (its `required`)
REQUIRED = {"peft_config": {"peft_type": "IA3"}, "last_blocks": 1}


@pytest.mark.parametrize("name", TRAINED_METHODS)
def test_each_recipe_method_builds_what_its_entry_says(name, tiny_base):
    method = METHODS[name]
    args = ModelArguments(base_model=tiny_base, method=name, **{key: REQUIRED[key] for key in method.required})
    model = build_model(args)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any("mask_decoder" in n for n in trainable), "every method trains the mask decoder"
    # the embedding cache takes the encoder of a frozen-encoder method (CAD runs beside it) and refuses the others
    if method.frozen_encoder:
        encoder, _ = frozen_vision_encoder(model)
        assert not any(p.requires_grad for p in encoder.parameters())
    elif isinstance(model, PeftModel):
        with pytest.raises(ValueError, match=r"cannot be cached.*keep the encoder frozen: CAD, Decoder-only tuning"):
            frozen_vision_encoder(model)
    else:  # the partial methods train weights of the encoder itself
        assert any(n.startswith("vision_encoder.") for n in trainable)
    # an adapter of the method's type (peft's: the type of its peft_config), or the base model's own weights
    peft_config = getattr(model, "peft_config", {}).get("default")
    if isinstance(model, PeftModel):
        assert str(getattr(peft_config.peft_type, "value", peft_config.peft_type)) == adapter_peft_type(args)
        assert name == "peft" or adapter_peft_type(args) == method.peft_type
    else:
        assert peft_config is None


def test_the_cache_needs_a_frozen_encoder_method():
    with pytest.raises(ValueError, match=r"cache_embeddings needs .* \(cad, decoder_only\); sam_adapter changes"):
        parse_args(["--method", "sam_adapter", "--cache_embeddings", "true"])
    parse_args(["--method", "cad", "--cache_embeddings", "true"])


@pytest.mark.parametrize("name", list(METHODS))
def test_each_methods_card_text_comes_from_the_registry(name):
    method = METHODS[name]
    assert method_of_peft_type(method.peft_type) is method
    card = adapter_model_card(base_model="facebook/sam-vit-base", peft_type=method.peft_type, adapter_id="me/adapter")
    assert method.description in card.text
    assert method.title in card.text
    assert "A `" not in card.text  # the fallback of an unknown peft type


def test_an_unknown_peft_type_gets_the_generic_card_text():
    assert method_of_peft_type("IA3") is None
    card = adapter_model_card(base_model="facebook/sam-vit-base", peft_type="IA3", adapter_id="me/adapter")
    assert "A `IA3` adapter." in card.text

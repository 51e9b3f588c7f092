"""Growing a model into a wider preset (`apr.train.grow`): the same function, more room."""

import pytest
import torch

from apr.model_folder import make_model
from apr.tokenizer import build_tokenizer
from apr.train import grow


def test_which_presets_grow_into_which():
    assert grow.grows_into("cpu-mini", "cpu-wide")
    assert not grow.grows_into("cpu-wide", "cpu-mini")  # narrower
    assert not grow.grows_into("cpu-mini", "cpu-deep")  # more layers: not a widening
    assert not grow.grows_into("cpu-mini", "cpu-mini") and not grow.grows_into("cpu-mini", "nonesuch")


def test_widened_mlps_compute_what_the_narrow_model_did_and_can_learn():
    tok = build_tokenizer()
    torch.manual_seed(0)
    narrow, wide = make_model("cpu-mini", tok), make_model("cpu-wide", tok)
    for p in narrow.parameters():  # not the near-zero initial weights: a model that computes something
        torch.nn.init.normal_(p, std=0.3)
    fresh = {k: v.clone() for k, v in wide.state_dict().items()}
    grown = grow.widen_mlps(narrow.state_dict(), fresh)
    wide.load_state_dict(grown, strict=True)
    ids = torch.randint(4, len(tok), (2, 40))
    with torch.no_grad():
        torch.testing.assert_close(wide(ids).logits, narrow(ids).logits, rtol=1e-5, atol=1e-5)
    down = grown["model.layers.0.mlp.down_proj.weight"]
    assert down[:, 352:].abs().sum() == 0 and down[:, :352].abs().sum() > 0
    up = grown["model.layers.0.mlp.up_proj.weight"]
    assert torch.equal(up[352:], fresh["model.layers.0.mlp.up_proj.weight"][352:])  # the wide model's own init
    # the new units get a gradient (through their zero output columns), so training uses them
    wide(ids).logits.sum().backward()
    assert wide.model.layers[0].mlp.down_proj.weight.grad[:, 352:].abs().sum() > 0


def test_a_state_that_does_not_grow_into_the_model_is_refused():
    tok = build_tokenizer()
    fresh = make_model("cpu-mini", tok).state_dict()
    with pytest.raises(ValueError, match="does not grow"):
        grow.widen_mlps(make_model("cpu-wide", tok).state_dict(), fresh)

"""New weights for a running LocalEngine, read from a model folder and checked before they
are copied in (`LocalEngine.stage_weights`, then `swap_weights`; `reload_weights` does both).

Staging reads local files only and touches nothing the engine uses, so it may run on another
thread while the old weights serve (`apr serve` does). A folder is refused (WeightsRefused)
unless it has the served architecture, layer shapes, rotary embedding, tokenizer and end
tokens, and every weight, all finite; a dry run of the copy on the meta device finds any
key or shape the real copy would trip on.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from torch import Tensor

from apr.engine.base import WeightsRefused
from apr.engine.llama import ModelArgs, Transformer, rope_inv_freq
from apr.errors import first_line


def eos_ids(config, tokenizer) -> set[int]:
    """The end-of-sequence ids a model stops at: its config's and its tokenizer's."""
    eos: set[int] = set()
    for e in (getattr(config, "eos_token_id", None), tokenizer.eos_token_id):
        if isinstance(e, int):
            eos.add(e)
        elif isinstance(e, (list, tuple)):
            eos.update(e)
    return eos


def stage(folder: Path, served: Transformer, served_config, tokenizer, served_eos: set[int],
          dtype: torch.dtype) -> dict[str, Tensor]:
    """The HF state dict of `folder`, checked against the served model; WeightsRefused says
    what does not fit."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from apr.tokenizer import tokenizer_fingerprint

    if not folder.is_dir():
        raise WeightsRefused(f"no model folder at {folder}")
    try:
        cfg = AutoConfig.from_pretrained(folder, local_files_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable config is a refusal, not a crash
        raise WeightsRefused(f"not a Hugging Face model folder ({first_line(e)})") from None
    new_type, old_type = getattr(cfg, "model_type", None), getattr(served_config, "model_type", None)
    if new_type != old_type:
        raise WeightsRefused(f"different architecture: model_type {new_type!r}, served {old_type!r}")
    try:
        args = ModelArgs.from_hf_config(cfg)
        inv, scaling = rope_inv_freq(cfg, args.head_dim)
    except Exception as e:  # noqa: BLE001
        raise WeightsRefused(f"unusable config ({first_line(e)})") from None
    old = served.args
    diff = [f"{f.name} {getattr(args, f.name)} (served {getattr(old, f.name)})"
            for f in dataclasses.fields(old) if getattr(args, f.name) != getattr(old, f.name)]
    if diff:
        raise WeightsRefused("different architecture: " + ", ".join(diff))
    if inv.shape != served.inv_freq.shape or not torch.allclose(inv.cpu(), served.inv_freq.float().cpu()) \
            or scaling != served.rope_scaling:
        raise WeightsRefused("different rotary position embedding (rope parameters)")
    try:
        tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except Exception as e:  # noqa: BLE001
        raise WeightsRefused(f"no readable tokenizer ({first_line(e)})") from None
    new_fp, old_fp = tokenizer_fingerprint(tok), tokenizer_fingerprint(tokenizer)
    if new_fp != old_fp:
        raise WeightsRefused(f"different tokenizer ({new_fp}, served {old_fp})")
    eos = eos_ids(cfg, tok)
    if eos != served_eos:
        raise WeightsRefused(f"different end-of-sequence tokens {sorted(eos)} (served {sorted(served_eos)})")
    try:
        hf, info = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, dtype=dtype,
                                                         output_loading_info=True)
    except Exception as e:  # noqa: BLE001
        raise WeightsRefused(f"cannot load the weights ({first_line(e)})") from None
    missing = [k for k in info.get("missing_keys", ()) if not (args.tie_embeddings and k == "lm_head.weight")]
    bad = missing + [str(k) for k in info.get("mismatched_keys", ())]
    if bad:
        raise WeightsRefused(f"the checkpoint lacks or misshapes {len(bad)} weights (e.g. {bad[0]})")
    sd = hf.state_dict()
    del hf
    for k, v in sd.items():
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            raise WeightsRefused(f"weight {k} has NaN or infinite values")
    with torch.device("meta"):  # a dry run of the real copy: every key and shape, no memory
        probe = Transformer(args, inv, scaling)
    try:
        probe.load_hf_state_dict(sd)
    except Exception as e:  # noqa: BLE001
        raise WeightsRefused(f"weights do not fit the served model ({first_line(e)})") from None
    return sd

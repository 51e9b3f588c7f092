"""Growing a trained model into a larger preset without changing what it computes.

The CPU line's models (issue 17) get most products wrong, and a 0.6M-parameter model may
lack room for the multiplication table rather than examples of it. Starting a larger model
from scratch would throw away every token they have seen; instead the MLPs are widened:
the new hidden units' input rows (`gate_proj`, `up_proj`) get the larger model's own random
initialisation and their output columns (`down_proj`) are zero, so the grown model computes
exactly what the trained one did, and training then puts the new units to use.
"""

from __future__ import annotations

from apr.model_folder import PRESETS

_INPUT = ("mlp.gate_proj.weight", "mlp.up_proj.weight")  # [intermediate, hidden]
_OUTPUT = "mlp.down_proj.weight"  # [hidden, intermediate]


def grows_into(old: str, new: str) -> bool:
    """Whether a model of preset `old` can be grown into `new`: the same layers, width, heads
    and positions, and a wider MLP."""
    if old not in PRESETS or new not in PRESETS:
        return False
    (l0, h0, i0, n0, p0), (l1, h1, i1, n1, p1) = PRESETS[old], PRESETS[new]
    return (l0, h0, n0, p0) == (l1, h1, n1, p1) and i1 > i0


def widen_mlps(state: dict, fresh: dict) -> dict:
    """`state` (a trained model's weights) laid into `fresh` (a larger model's initial
    weights, same names): every tensor of `state` fills its leading rows (MLP inputs) or
    columns (MLP outputs) of `fresh`'s; the rest of an MLP input keeps `fresh`'s values, the rest
    of an MLP output is zero. Returns a new state dict."""
    if set(state) != set(fresh):
        raise ValueError(f"weights differ in names: {sorted(set(state) ^ set(fresh))[:3]}")
    out = {}
    for name, new in fresh.items():
        old = state[name].to(new.dtype)
        grows = 0 if name.endswith(_INPUT) else 1 if name.endswith(_OUTPUT) else None  # the widened dimension
        if old.dim() != new.dim() or any(a != b and (d != grows or a > b)
                                         for d, (a, b) in enumerate(zip(old.shape, new.shape))):
            raise ValueError(f"{name}: {tuple(old.shape)} does not grow into {tuple(new.shape)}")
        if name.endswith(_INPUT):
            grown = new.detach().clone()
            grown[: old.shape[0]] = old
        elif name.endswith(_OUTPUT):
            grown = new.new_zeros(new.shape)
            grown[:, : old.shape[1]] = old
        else:
            grown = old
        out[name] = grown
    return out

"""A compact Llama forward pass over a slotted KV cache (gpt-fast style).

We read the weights of a Hugging Face `LlamaForCausalLM` (our own checkpoints or published
Llama-2-shaped ones) into a few fused tensors and run our own forward, so one decoding step
is a handful of large matmuls per layer and nothing else: no HF module calls, no Python
objects per sequence, no padded full-capacity attention.

KV cache: per layer `k, v: [slots, n_kv_heads, max_len + 1, head_dim]`. Position `max_len`
of every slot is a scratch cell: padded query positions and idle batch rows write there,
so a step never corrupts a live or kept cache.

One forward serves both prefill and decode: `tokens [B, S]` for batch rows that map to
cache slots, each row starting at its own position `start[b]` with `n_valid[b] <= S` real
tokens (the rest is padding). Attention reads only `cache[:, :, :T]` with
`T = max(start + n_valid)` (the batch's longest live length), masked per row by position,
so cost grows with the live lengths, not with `max_len`. A decode step may instead pass
`spans` (attention.py): groups of rows that each read only up to their own longest row.
Rows may read their first positions from another slot (`prefix`, or a span's `p_slot`): a
shared prefix, e.g. a parent's cache its children were forked from (scheduler.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from apr.engine.attention import Span, attend, attend_spans


@dataclass
class ModelArgs:
    vocab_size: int
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    intermediate_size: int
    norm_eps: float
    tie_embeddings: bool
    attention_bias: bool = False
    mlp_bias: bool = False

    @classmethod
    def from_hf_config(cls, cfg) -> "ModelArgs":
        n_heads = cfg.num_attention_heads
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // n_heads
        return cls(
            vocab_size=cfg.vocab_size,
            dim=cfg.hidden_size,
            n_layers=cfg.num_hidden_layers,
            n_heads=n_heads,
            n_kv_heads=getattr(cfg, "num_key_value_heads", None) or n_heads,
            head_dim=head_dim,
            intermediate_size=cfg.intermediate_size,
            norm_eps=cfg.rms_norm_eps,
            tie_embeddings=bool(getattr(cfg, "tie_word_embeddings", False)),
            attention_bias=bool(getattr(cfg, "attention_bias", False)),
            mlp_bias=bool(getattr(cfg, "mlp_bias", False)),
        )


def rope_inv_freq(cfg, head_dim: int) -> tuple[Tensor, float]:
    """Inverse frequencies and attention scaling, as the HF config asks for.

    transformers 5 keeps `rope_theta` inside `rope_parameters`; older configs have it at the
    top level. Non-default rope types (llama3, linear, ...) go through HF's own init function.
    """
    params = getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {}
    rope_type = params.get("rope_type", params.get("type", "default")) or "default"
    theta = params.get("rope_theta", getattr(cfg, "rope_theta", 10000.0))
    if rope_type == "default":
        inv = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
        return inv.float(), 1.0
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    inv, scaling = ROPE_INIT_FUNCTIONS[rope_type](cfg, torch.device("cpu"))
    return inv.float(), float(scaling)


def rms_norm(x: Tensor, w: Tensor, eps: float) -> Tensor:
    # Same order of operations as HF's LlamaRMSNorm: normalize in fp32, cast, then scale.
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return w * xf.to(x.dtype)


def rotate_half(x: Tensor) -> Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class Block(nn.Module):
    def __init__(self, a: ModelArgs):
        super().__init__()
        qkv_out = (a.n_heads + 2 * a.n_kv_heads) * a.head_dim
        self.wqkv = nn.Linear(a.dim, qkv_out, bias=a.attention_bias)  # fused q, k, v
        self.wo = nn.Linear(a.n_heads * a.head_dim, a.dim, bias=a.attention_bias)
        self.w13 = nn.Linear(a.dim, 2 * a.intermediate_size, bias=a.mlp_bias)  # fused gate, up
        self.w2 = nn.Linear(a.intermediate_size, a.dim, bias=a.mlp_bias)
        self.attn_norm = nn.Parameter(torch.ones(a.dim))
        self.mlp_norm = nn.Parameter(torch.ones(a.dim))


class Transformer(nn.Module):
    def __init__(self, a: ModelArgs, inv_freq: Tensor, rope_scaling: float = 1.0):
        super().__init__()
        self.args = a
        self.embed = nn.Embedding(a.vocab_size, a.dim)
        self.layers = nn.ModuleList(Block(a) for _ in range(a.n_layers))
        self.norm = nn.Parameter(torch.ones(a.dim))
        self.lm_head = nn.Linear(a.dim, a.vocab_size, bias=False)
        self.inv_freq = inv_freq  # plain fp32 tensor: kept out of .to(dtype)
        self.rope_scaling = rope_scaling
        self.k_cache: list[Tensor] = []
        self.v_cache: list[Tensor] = []
        self.max_len = 0
        self.cos: Tensor | None = None
        self.sin: Tensor | None = None

    # ---- construction ---------------------------------------------------------------
    @classmethod
    def from_hf(cls, hf_model, device="cpu", dtype=torch.float32) -> "Transformer":
        cfg = hf_model.config
        a = ModelArgs.from_hf_config(cfg)
        inv, scaling = rope_inv_freq(cfg, a.head_dim)
        with torch.device("meta"):
            m = cls(a, inv, scaling)
        m = m.to_empty(device=device)
        m.inv_freq = inv.to(device)
        m.load_hf_state_dict(hf_model.state_dict())
        return m.to(dtype=dtype).eval()

    @torch.no_grad()
    def load_hf_state_dict(self, sd: dict[str, Tensor]) -> None:
        """Copy HF Llama weights into our fused layout (also used to reload weights)."""
        a = self.args
        sd = {k.removeprefix("model."): v for k, v in sd.items()}

        def cp(dst: Tensor, src: Tensor) -> None:
            if dst.shape != src.shape:
                raise ValueError(f"weight shape {tuple(src.shape)} != expected {tuple(dst.shape)}")
            dst.copy_(src.to(device=dst.device, dtype=dst.dtype))

        cp(self.embed.weight, sd["embed_tokens.weight"])
        cp(self.norm, sd["norm.weight"])
        head = sd.get("lm_head.weight")
        if head is None or a.tie_embeddings:
            head = sd["embed_tokens.weight"]
        cp(self.lm_head.weight, head)
        for i, blk in enumerate(self.layers):
            p = f"layers.{i}."
            cp(blk.wqkv.weight, torch.cat([sd[p + f"self_attn.{n}_proj.weight"] for n in "qkv"]))
            if a.attention_bias:
                cp(blk.wqkv.bias, torch.cat([sd[p + f"self_attn.{n}_proj.bias"] for n in "qkv"]))
                cp(blk.wo.bias, sd[p + "self_attn.o_proj.bias"])
            cp(blk.wo.weight, sd[p + "self_attn.o_proj.weight"])
            cp(blk.w13.weight, torch.cat([sd[p + "mlp.gate_proj.weight"], sd[p + "mlp.up_proj.weight"]]))
            cp(blk.w2.weight, sd[p + "mlp.down_proj.weight"])
            if a.mlp_bias:
                cp(blk.w13.bias, torch.cat([sd[p + "mlp.gate_proj.bias"], sd[p + "mlp.up_proj.bias"]]))
                cp(blk.w2.bias, sd[p + "mlp.down_proj.bias"])
            cp(blk.attn_norm, sd[p + "input_layernorm.weight"])
            cp(blk.mlp_norm, sd[p + "post_attention_layernorm.weight"])

    def setup_cache(self, slots: int, max_len: int) -> None:
        """Preallocate the KV cache (one extra scratch position per slot) and RoPE tables."""
        a = self.args
        dev, dt = self.embed.weight.device, self.embed.weight.dtype
        shape = (slots, a.n_kv_heads, max_len + 1, a.head_dim)
        self.k_cache = [torch.zeros(shape, device=dev, dtype=dt) for _ in range(a.n_layers)]
        self.v_cache = [torch.zeros(shape, device=dev, dtype=dt) for _ in range(a.n_layers)]
        self.max_len = max_len
        t = torch.arange(max_len + 1, device=dev, dtype=torch.float32)
        freqs = torch.outer(t, self.inv_freq.float())
        emb = torch.cat([freqs, freqs], dim=-1)
        self.cos = (emb.cos() * self.rope_scaling).to(dt)
        self.sin = (emb.sin() * self.rope_scaling).to(dt)

    def weight_bytes(self) -> int:
        return sum(p.numel() * p.element_size() for p in self.parameters())

    # ---- forward --------------------------------------------------------------------
    def forward(
        self,
        tokens: Tensor,  # [B, S] int64
        rows: slice | Tensor,  # cache slots of the batch rows: a contiguous slice (a view, no copy) or an index tensor
        start: Tensor,  # [B] int64, position of tokens[:, 0]
        n_valid: Tensor,  # [B] int64, real tokens per row (<= S)
        t_max: int,  # max(start + n_valid) over rows that matter: the attended length
        all_logits: bool = False,
        spans: list[Span] | None = None,  # decode (S = 1) only: attention span by span
        prefix: Tensor | None = None,  # [B, 2]: row b reads positions [0, prefix[b, 1]) from slot prefix[b, 0]
    ) -> Tensor:
        """Logits at each row's last valid token ([B, V], fp32), or at every position."""
        a = self.args
        B, S = tokens.shape
        ar = torch.arange(S, device=tokens.device)
        valid = ar[None, :] < n_valid[:, None]
        pos = start[:, None] + ar[None, :]  # [B, S]
        wpos = torch.where(valid, pos, self.max_len)  # padding writes the scratch cell
        rpos = wpos.clamp(max=self.max_len)
        cos, sin = self.cos[rpos][:, None], self.sin[rpos][:, None]  # [B, 1, S, hd]
        # Row b, query s sees keys j <= its position; idle rows (start = max_len) see all,
        # which keeps softmax finite; their output is ignored.
        mask = torch.arange(t_max, device=tokens.device)[None, None, :] <= rpos[:, :, None]  # [B, S, T]
        slot_idx = rows if isinstance(rows, Tensor) else torch.arange(rows.start, rows.stop, device=tokens.device)
        # Row of each (row, query, kv head) cell in the cache viewed as [-1, hd]: one index_copy_
        # per layer and tensor (an index_put with a slice between its indices is ~10x slower).
        L = self.max_len + 1
        heads = torch.arange(a.n_kv_heads, device=tokens.device)
        widx = ((slot_idx[:, None, None] * a.n_kv_heads + heads) * L + wpos[:, :, None]).reshape(-1)
        if prefix is not None and spans is None:
            tpos = torch.arange(t_max, device=tokens.device)[None, :]
            phys = torch.where(tpos < prefix[:, 1:], prefix[:, :1], slot_idx[:, None])  # [B, T] slot of each cell

        x = self.embed(tokens)
        nq, nkv, hd = a.n_heads, a.n_kv_heads, a.head_dim
        for i, blk in enumerate(self.layers):
            h = rms_norm(x, blk.attn_norm, a.norm_eps)
            qkv = blk.wqkv(h)
            qk, v = qkv.split([(nq + nkv) * hd, nkv * hd], dim=-1)
            qk = qk.view(B, S, nq + nkv, hd).transpose(1, 2)  # RoPE on q and k at once
            qk = qk * cos + rotate_half(qk) * sin
            q, k = qk[:, :nq], qk[:, nq:].transpose(1, 2)  # [B, nq, S, hd], [B, S, nkv, hd]
            kc, vc = self.k_cache[i], self.v_cache[i]
            kc.view(-1, hd).index_copy_(0, widx, k.reshape(-1, hd))
            vc.view(-1, hd).index_copy_(0, widx, v.reshape(-1, hd))
            if spans is not None:
                y = attend_spans(q, kc, vc, spans, mask)
            elif prefix is not None:
                # Rows read a shared prefix from another slot: gather [B, T] cells (a copy;
                # prefill, or decode without spans).
                ks, vs = kc[phys, :, tpos], vc[phys, :, tpos]  # [B, T, nkv, hd]
                y = attend(q, ks.transpose(1, 2), vs.transpose(1, 2), mask, nkv)
            else:
                # A slice gives views of the cache (no copy); an index tensor gathers.
                y = attend(q, kc[rows, :, :t_max], vc[rows, :, :t_max], mask, nkv)  # [B, S, nq * hd]
            x = x + blk.wo(y)
            h = rms_norm(x, blk.mlp_norm, a.norm_eps)
            gate, up = blk.w13(h).chunk(2, dim=-1)
            x = x + blk.w2(F.silu(gate) * up)
        if not all_logits:
            last = (n_valid - 1).clamp(min=0)
            x = x[torch.arange(B, device=x.device), last][:, None]
        x = rms_norm(x, self.norm, a.norm_eps)
        logits = self.lm_head(x).float()
        return logits if all_logits else logits[:, 0]

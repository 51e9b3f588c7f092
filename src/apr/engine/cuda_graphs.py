"""Decode steps replayed from CUDA graphs (the model runner's CUDA decode path)."""

from __future__ import annotations

import torch
from torch import Tensor

from apr.engine.llama import Transformer


class DecodeGraphs:
    """Decode steps replayed from CUDA graphs, one per (row bucket, length bucket).

    A decode step of a small model is launch-bound (hundreds of small kernels, plus Python
    per layer), so we capture it. Shapes vary every step, so we bucket them: the batch is
    slots 0..R-1 with R a power of two (idle rows write the scratch cell), the attended
    length is rounded up to a multiple of `t_bucket` (positions past a row's length are
    masked). Capturing re-runs the step on the real inputs, which is harmless: it writes
    the same K/V into the same cells.
    """

    def __init__(self, model: Transformer, slots: int, t_bucket: int = 256):
        self.model, self.slots, self.t_bucket = model, slots, t_bucket
        dev = model.embed.weight.device
        self.inp = torch.zeros(slots, 2, dtype=torch.int64, device=dev)  # token, start
        self.ones = torch.ones(slots, dtype=torch.int64, device=dev)
        self.graphs: dict[tuple[int, int], tuple[torch.cuda.CUDAGraph, Tensor]] = {}
        self.pool = None

    def rows_bucket(self, hi: int) -> int:
        r = 8
        while r < hi:
            r *= 2
        return min(r, self.slots)

    def run(self, d: Tensor, t_max: int) -> Tensor:
        R = d.shape[0]
        T = min(-(-t_max // self.t_bucket) * self.t_bucket, self.model.max_len + 1)
        self.inp[:R].copy_(d)
        key = (R, T)
        if key not in self.graphs:
            self.graphs[key] = self._capture(R, T)
        g, out = self.graphs[key]
        g.replay()
        return out

    def _capture(self, R: int, T: int):
        m, inp, ones = self.model, self.inp[:R], self.ones[:R]
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for _ in range(2):
                m(inp[:, :1], slice(0, R), inp[:, 1], ones, T)
        torch.cuda.current_stream().wait_stream(s)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g, pool=self.pool):
            out = m(inp[:, :1], slice(0, R), inp[:, 1], ones, T)
        self.pool = g.pool()
        return g, out

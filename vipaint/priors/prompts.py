"""Prompt conditioning of a text-to-image prior through the ordinary `cond` tensor: a `PromptTable` encodes
each distinct prompt string once (one batched text-encoder call per new set of strings) and hands out a long
id per (prompt, negative prompt) pair; `text_guided_eps` gathers the embeddings by id and applies
classifier-free guidance with the negative prompt as the unconditional branch (docs/algorithm.md §1).

So methods need no change: they pass `cond` (ids [B], tiled over samples by `Prior.eps`) and a guidance
scale g to `prior.eps`, exactly as for class labels."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

__all__ = ["PromptTable", "Context", "text_guided_eps"]

#: (context [N, L, D], pooled [N, P] or None): what a text-conditioned denoiser takes besides z and t
Context = tuple[Tensor, Tensor | None]


class PromptTable:
    """Embeddings of prompt strings, computed once each by `encode(list of strings) -> Context` (on the CPU),
    and ids of (prompt, negative) pairs.

    `ids(prompts, negative)` → long [B]; `context(ids, which)` → the embeddings of the pairs' prompts
    (which="prompt") or negative prompts ("negative") on a device and dtype; `unconditional(n)` → the
    empty prompt's, which an unconditional call uses (diffusers' default negative prompt)."""

    #: how many sets of rows stay cached on a device (memory: a set of k SD3 prompts is k × 5.5 MB in float32)
    CACHED_SETS = 8

    def __init__(self, encode: Callable[[list[str]], Context]) -> None:
        self._encode = encode
        self._row: dict[str, int] = {}
        self._hidden: Tensor | None = None
        self._pooled: Tensor | None = None
        self._pair: dict[tuple[int, int], int] = {}
        self._pairs: list[tuple[int, int]] = []
        self._on: dict[tuple, tuple[Tensor, Tensor | None]] = {}    # device copies of recent row sets

    def __len__(self) -> int:
        """The number of distinct strings encoded so far."""
        return len(self._row)

    @property
    def strings(self) -> list[str]:
        return list(self._row)

    @property
    def n_cached(self) -> int:
        """How many sets of rows are cached on devices (at most `CACHED_SETS`)."""
        return len(self._on)

    def _register(self, strings: Sequence[str]) -> None:
        new = list(dict.fromkeys(s for s in strings if s not in self._row))
        if not new:
            return
        hidden, pooled = self._encode(new)
        if hidden.shape[0] != len(new) or (pooled is not None and pooled.shape[0] != len(new)):
            raise ValueError(f"the text encoder returned {hidden.shape[0]} embeddings for {len(new)} prompts")
        hidden = hidden.detach().float().cpu()
        pooled = None if pooled is None else pooled.detach().float().cpu()
        self._hidden = hidden if self._hidden is None else torch.cat([self._hidden, hidden])
        if pooled is not None:
            self._pooled = pooled if self._pooled is None else torch.cat([self._pooled, pooled])
        for s in new:
            self._row[s] = len(self._row)

    def ids(self, prompts: Sequence[str], negative: Sequence[str] | str = "") -> Tensor:
        """Long ids [B] of the pairs (prompts[b], negative[b]) (`negative` a string: the same for all); new
        strings are encoded in one batched call."""
        prompts = [str(p) for p in prompts]
        negs = [str(negative)] * len(prompts) if isinstance(negative, str) else [str(n) for n in negative]
        if len(negs) != len(prompts):
            raise ValueError(f"got {len(negs)} negative prompts for {len(prompts)} prompts")
        self._register(prompts + negs + [""])
        out = []
        for p, n in zip(prompts, negs, strict=True):
            key = (self._row[p], self._row[n])
            if key not in self._pair:
                self._pair[key] = len(self._pairs)
                self._pairs.append(key)
            out.append(self._pair[key])
        return torch.tensor(out, dtype=torch.long)

    def _rows(self, rows: Tensor, device: torch.device, dtype: torch.dtype) -> Context:
        """The embeddings of table rows `rows` [N] (CPU, long) on `device`: only the distinct rows travel,
        and the last few such sets stay cached there (a method calls ε_θ with the same prompts every step)."""
        uniq, inverse = torch.unique(rows, return_inverse=True)
        key = (device, dtype, tuple(uniq.tolist()))
        hit = self._on.get(key)
        if hit is None:
            hit = (self._hidden[uniq].to(device, dtype),
                   None if self._pooled is None else self._pooled[uniq].to(device, dtype))
            if len(self._on) >= self.CACHED_SETS:
                self._on.pop(next(iter(self._on)))
            self._on[key] = hit
        else:                                          # most recently used last
            self._on[key] = self._on.pop(key)
        inv = inverse.to(device)
        return hit[0][inv], None if hit[1] is None else hit[1][inv]

    def context(self, ids: Tensor, which: str, device: torch.device, dtype: torch.dtype) -> Context:
        """The prompt's (which="prompt") or negative prompt's ("negative") embeddings of the pairs `ids` [N]."""
        if self._hidden is None:
            raise ValueError("no prompt has been registered; call prompt_ids(...) first")
        ids = ids.detach().long().cpu()
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= len(self._pairs)):
            raise ValueError(f"prompt ids must lie in [0, {len(self._pairs)}) (from prompt_ids), got "
                             f"[{int(ids.min())}, {int(ids.max())}]")
        pairs = torch.tensor(self._pairs, dtype=torch.long).reshape(-1, 2)
        return self._rows(pairs[ids, 0 if which == "prompt" else 1], device, dtype)

    def unconditional(self, n: int, device: torch.device, dtype: torch.dtype) -> Context:
        """The empty prompt's embeddings, repeated n times."""
        self._register([""])
        return self._rows(torch.full((n,), self._row[""], dtype=torch.long), device, dtype)


def text_guided_eps(net: Callable[[Tensor, Tensor, Context], Tensor], z: Tensor, t: Tensor, cond: Tensor | None,
                    guidance_scale: float, table: PromptTable) -> Tensor:
    """ε_θ(z, t, c) through `net(z, t, context) -> ε` (docs/algorithm.md §1): the empty prompt when `cond` is
    None; the prompt's ε_c for g = 1; the negative prompt's ε_u for g = 0; otherwise classifier-free guidance
    ε_u + g(ε_c − ε_u) from ONE call on [z; z] with contexts [prompt; negative]."""
    dev, dt = z.device, z.dtype
    if cond is None:
        return net(z, t, table.unconditional(z.shape[0], dev, dt))
    if guidance_scale == 1.0:
        return net(z, t, table.context(cond, "prompt", dev, dt))
    if guidance_scale == 0.0:
        return net(z, t, table.context(cond, "negative", dev, dt))
    (hc, pc), (hu, pu) = table.context(cond, "prompt", dev, dt), table.context(cond, "negative", dev, dt)
    ctx = (torch.cat([hc, hu]), None if pc is None else torch.cat([pc, pu]))
    e_c, e_u = net(torch.cat([z, z]), torch.cat([t, t]), ctx).chunk(2)
    return e_u + guidance_scale * (e_c - e_u)

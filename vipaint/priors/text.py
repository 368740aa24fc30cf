"""Text encoders of Stable Diffusion pipelines (`transformers` models, imported only when a text-conditioned
prior is loaded): a prompt → the denoiser's context, as diffusers' pipelines compute it (docs/algorithm.md §1).

* SD 1.x / 2.x (`StableDiffusionPipeline.encode_prompt` with `clip_skip=None`): tokens padded to the
  tokenizer's `model_max_length` (77), `CLIPTextModel`'s last hidden state (after its final layer norm),
  [77, D]; the attention mask only where the encoder's config sets `use_attention_mask`. SD 2.x needs no
  special case: its converted OpenCLIP-H encoder has 23 layers (the original's last layer removed), so the
  last hidden state *is* OpenCLIP's penultimate layer. No pooled output.
* SD3 / 3.5 (`StableDiffusion3Pipeline.encode_prompt`): CLIP-L and CLIP-G (`CLIPTextModelWithProjection`)
  each give their penultimate hidden state [77, 768] / [77, 1280] and their projected pooled output; the
  two hidden states are concatenated on the feature axis, zero-padded to T5's width (the transformer's
  `joint_attention_dim`, 4096) and stacked on the sequence axis before T5-XXL's last hidden state
  ([max_sequence_length = 256, 4096]; zeros when T5 is dropped), giving [77 + 256, 4096]; the pooled
  outputs are concatenated, [768 + 1280].

Options: the device the encoders run on ("cpu", or None: the prior's device at the first prompt), their
dtype, and dropping T5 (SD3 only; diffusers' `text_encoder_3=None`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = ["TextEncoder", "TEXT_KINDS", "clip_context", "sd3_context", "import_transformers", "load_text_encoder"]

#: "clip": SD 1.x/2.x (one CLIPTextModel); "sd3": SD3/3.5 (two CLIPTextModelWithProjection + optional T5)
TEXT_KINDS = ("clip", "sd3")


def import_transformers():
    """`import transformers` (deferred: only text-conditioned priors need it) with its logging quietened."""
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    return transformers


def sd3_context(clip_hidden: Sequence[Tensor], clip_pooled: Sequence[Tensor],
                t5_hidden: Tensor) -> tuple[Tensor, Tensor]:
    """SD3's joint context (docs/algorithm.md §1): the CLIP hidden states [N, L, D_i] concatenated on the
    features, zero-padded to T5's width, then stacked before T5's hidden state [N, L_t5, D_t5] on the sequence
    axis → [N, L + L_t5, D_t5]; pooled outputs concatenated → [N, ΣP_i]."""
    clip = torch.cat(list(clip_hidden), dim=-1)
    width = t5_hidden.shape[-1]
    if clip.shape[-1] > width:
        raise ValueError(f"the CLIP hidden states are {clip.shape[-1]} wide, more than T5's {width}")
    clip = nn.functional.pad(clip, (0, width - clip.shape[-1]))
    return torch.cat([clip, t5_hidden.to(clip.dtype)], dim=-2), torch.cat(list(clip_pooled), dim=-1)


def clip_context(encoder: nn.Module, ids: Tensor, attention_mask: Tensor | None) -> Tensor:
    """SD 1.x/2.x context: `CLIPTextModel`'s last hidden state [N, L, D] (docs/algorithm.md §1)."""
    return encoder(ids, attention_mask=attention_mask)[0]


class TextEncoder:
    """Prompts → (context [N, L, D], pooled [N, P] or None) for one pipeline kind (see the module docstring).

    Not an `nn.Module` on purpose: the prior keeps it outside its module tree, so `prior.to(device)` does
    not move the (large) text encoders; they go to `device` (None: the device `encode` is asked for) at the
    first call.

    Args:
        kind: "clip" (SD 1.x/2.x) or "sd3".
        tokenizers: the CLIP tokenizer(s) (SD3: CLIP-L, CLIP-G, then T5's or None).
        encoders: the matching `transformers` models (SD3: T5 may be None: dropped, zeros instead).
        device: where the encoders run ("cpu" or None: the caller's device).
        dtype: the encoders' weight dtype (None: keep the loaded one).
        max_sequence_length: T5 tokens (SD3; diffusers' default 256).
        joint_attention_dim: T5's width, the zero context's width when T5 is dropped (SD3).
    """

    def __init__(self, kind: str, tokenizers: Sequence[object | None], encoders: Sequence[nn.Module | None], *,
                 device: str | None = None, dtype: str | None = None, max_sequence_length: int = 256,
                 joint_attention_dim: int | None = None) -> None:
        if kind not in TEXT_KINDS:
            raise ValueError(f"text encoder kind must be one of {TEXT_KINDS}, got {kind!r}")
        n = 1 if kind == "clip" else 3
        if len(tokenizers) != n or len(encoders) != n:
            raise ValueError(f"a {kind!r} text encoder takes {n} tokenizer(s) and encoder(s), got "
                             f"{len(tokenizers)} and {len(encoders)}")
        if any(e is None for e in encoders[:2 if kind == "sd3" else 1]):
            raise ValueError("the CLIP text encoder(s) are required; only T5 can be dropped")
        if kind == "sd3" and encoders[2] is None and joint_attention_dim is None:
            raise ValueError("dropping T5 needs joint_attention_dim (the transformer's) for the zero context")
        self.kind, self.tokenizers, self.encoders = kind, list(tokenizers), list(encoders)
        self.device = None if device is None else torch.device(device)
        self.max_sequence_length = int(max_sequence_length)
        self.joint_attention_dim = joint_attention_dim
        for enc in self.encoders:
            if enc is not None:
                enc.eval().requires_grad_(False)
                if dtype is not None:
                    enc.to(getattr(torch, dtype))
        self._placed: torch.device | None = None

    @property
    def has_t5(self) -> bool:
        return self.kind == "sd3" and self.encoders[2] is not None

    def _place(self, device: torch.device) -> torch.device:
        target = self.device or device
        if self._placed != target:
            for enc in self.encoders:
                if enc is not None:
                    enc.to(target)
            self._placed = target
        return target

    def _tokens(self, tok, prompts: list[str], length: int, device: torch.device) -> tuple[Tensor, Tensor]:
        out = tok(prompts, padding="max_length", max_length=length, truncation=True, return_tensors="pt")
        return out.input_ids.to(device), out.attention_mask.to(device)

    @torch.no_grad()
    def encode(self, prompts: Sequence[str], device: torch.device | str = "cpu") -> tuple[Tensor, Tensor | None]:
        """(context [N, L, D], pooled [N, P] or None), float32 on the CPU, for N prompts (one batched call per
        encoder); the encoders run on `self.device`, or on `device` when that is None."""
        prompts = [str(p) for p in prompts]
        dev = self._place(torch.device(device))
        if self.kind == "clip":
            tok, enc = self.tokenizers[0], self.encoders[0]
            ids, mask = self._tokens(tok, prompts, int(tok.model_max_length), dev)
            use_mask = bool(getattr(enc.config, "use_attention_mask", False))
            return clip_context(enc, ids, mask if use_mask else None).float().cpu(), None
        hidden, pooled = [], []
        for tok, enc in zip(self.tokenizers[:2], self.encoders[:2], strict=True):
            ids, _ = self._tokens(tok, prompts, int(tok.model_max_length), dev)
            out = enc(ids, output_hidden_states=True)
            hidden.append(out.hidden_states[-2].float())      # penultimate layer (clip_skip None)
            pooled.append(out[0].float())                      # text_embeds: the projected pooled output
        if self.has_t5:
            ids, _ = self._tokens(self.tokenizers[2], prompts, self.max_sequence_length, dev)
            t5 = self.encoders[2](ids)[0].float()
        else:
            t5 = torch.zeros(len(prompts), self.max_sequence_length, int(self.joint_attention_dim), device=dev)
        ctx, pool = sd3_context(hidden, pooled, t5)
        return ctx.cpu(), pool.cpu()

    def __repr__(self) -> str:
        names = [type(e).__name__ if e is not None else "None" for e in self.encoders]
        return f"TextEncoder(kind={self.kind!r}, encoders={names}, device={self.device})"


def load_text_encoder(target: str, index: dict | None, kind: str, *, local_files_only: bool,
                      device: str | None = None, dtype: str | None = None, drop_t5: bool = False,
                      max_sequence_length: int = 256, joint_attention_dim: int | None = None) -> TextEncoder:
    """The tokenizers and text encoders of the pipeline at `target` (a folder or a Hub id) through the real
    `from_pretrained` path: `tokenizer/` + `text_encoder/` (SD 1.x/2.x), also `tokenizer_2/` + `text_encoder_2/`
    and, unless `drop_t5` or the pipeline lists none, `tokenizer_3/` + `text_encoder_3/` (SD3). Classes are
    those `model_index.json` names (defaults: CLIPTokenizer, CLIPTextModel / CLIPTextModelWithProjection,
    T5TokenizerFast, T5EncoderModel)."""
    tf = import_transformers()
    index = index or {}
    kw: dict = {"local_files_only": local_files_only}
    if dtype is not None:
        kw["dtype"] = getattr(torch, dtype)
    default_enc = "CLIPTextModel" if kind == "clip" else "CLIPTextModelWithProjection"
    subs = [("", default_enc)] if kind == "clip" else [("", default_enc), ("_2", default_enc), ("_3", "T5EncoderModel")]
    toks, encs = [], []
    for suffix, enc_default in subs:
        tok_cls, enc_cls = _named(index, "tokenizer" + suffix), _named(index, "text_encoder" + suffix)
        listed_empty = ("text_encoder" + suffix) in index and enc_cls is None
        if suffix == "_3" and (drop_t5 or listed_empty):
            toks.append(None)
            encs.append(None)
            continue
        tok_default = "T5TokenizerFast" if suffix == "_3" else "CLIPTokenizer"
        try:
            toks.append(getattr(tf, tok_cls or tok_default).from_pretrained(
                target, subfolder="tokenizer" + suffix, local_files_only=local_files_only))
            encs.append(getattr(tf, enc_cls or enc_default).from_pretrained(
                target, subfolder="text_encoder" + suffix, **kw))
        except OSError as err:
            if suffix != "_3":
                raise
            raise OSError(f"T5 (text_encoder_3/, tokenizer_3/) could not be loaded; set drop_t5: true "
                          f"(vipaint inpaint --drop-t5) to run without it. {str(err).splitlines()[0][:200]}") from err
    return TextEncoder(kind, toks, encs, device=device, dtype=dtype, max_sequence_length=max_sequence_length,
                       joint_attention_dim=joint_attention_dim)


def _named(index: dict, key: str) -> str | None:
    """The class a `model_index.json` entry names (None: absent or listed as [null, null])."""
    v = index.get(key)
    return v[1] if isinstance(v, list) and len(v) == 2 and isinstance(v[1], str) else None

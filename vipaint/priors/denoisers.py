"""Adapters that give every supported diffusers denoiser one call signature, `net(z, t, labels) -> output`
(the raw network output: ε, v or x0, learned-variance channels included), plus the external class
embedding of CompVis class-conditional LDMs (cin256-v2).

Supported denoisers (diffusers 0.42):

* `UNet2DModel`: `unet(z, t, class_labels=labels)`; labels optional (its own `num_class_embeds` table).
* `UNet2DConditionModel`: `unet(z, t, encoder_hidden_states=E(labels))` with E(labels) of shape [N, 1, D];
  labels required, E read from `class_embedder/`.
* `DiTTransformer2DModel` (Hub configs say `Transformer2DModel`): `dit(z, timestep=t, class_labels=labels)`;
  labels required (null class = `num_embeds_ada_norm`).
* text-conditioned (Stable Diffusion; `labels` is then a context (hidden [N, L, D], pooled [N, P] or None)
  from `vipaint.priors.prompts`): `UNet2DConditionModel` with `encoder_hidden_states=hidden` (SD 1.x/2.x),
  `SD3Transformer2DModel(z, timestep=t, encoder_hidden_states=hidden, pooled_projections=pooled)` (SD3/3.5;
  t is the model's own time, σ·1000 on a flow path).

The class embedding E is `nn.Embedding(num_classes + 1, cross_attention_dim)` (row `num_classes` = the null
class used for classifier-free guidance), stored as a subfolder `class_embedder/` beside `unet/`:

    class_embedder/config.json                           {"_class_name": "ClassEmbedder", "num_classes": 1000,
                                                          "embedding_dim": 512}
    class_embedder/diffusion_pytorch_model.safetensors   {"embedding.weight": float [num_classes + 1, D]}

which is what a converted CompVis cin256-v2 checkpoint holds (its `cond_stage_model.embedding.weight`,
1001 × 512, with class 1000 the unconditional label).

From raw output to ε: `eps_from_output` (ε-, v- and x0-prediction, learned variance), `guided_eps`
(null class, classifier-free guidance in one batched call), `resolve_num_classes` (the class convention).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

from vipaint.diffusion import bcast, eps_from_x0

__all__ = ["ClassEmbedder", "Denoiser", "UNetDenoiser", "CrossAttnUNetDenoiser", "DiTDenoiser", "TextUNetDenoiser",
           "SD3Denoiser", "wrap_denoiser",
           "resolve_num_classes", "eps_from_output", "guided_eps", "DENOISER_CLASSES", "PREDICTION_TYPES",
           "CLASS_EMBEDDER_CONFIG", "CLASS_EMBEDDER_WEIGHTS"]

CLASS_EMBEDDER_CONFIG = "config.json"
CLASS_EMBEDDER_WEIGHTS = "diffusion_pytorch_model.safetensors"

#: diffusers class name → adapter kind; `Transformer2DModel` is the Hub name of DiT checkpoints
#: (diffusers remaps it to `DiTTransformer2DModel` when `norm_type == "ada_norm_zero"`).
DENOISER_CLASSES = {"UNet2DModel": "unet", "UNet2DConditionModel": "unet_cond",
                    "DiTTransformer2DModel": "dit", "Transformer2DModel": "dit", "SD3Transformer2DModel": "sd3"}
#: `prediction_type`s a prior converts to ε: `eps_from_output` on VP schedules, and on any Gaussian path
#: `vipaint.priors.paths.eps_x0_from_output` ("flow_prediction": a rectified-flow velocity, docs/algorithm.md §11.3)
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample", "flow_prediction")


class ClassEmbedder(nn.Module):
    """Class label → cross-attention context [N, 1, D] (CompVis `ClassEmbedder`); label `num_classes` is
    the null class of classifier-free guidance."""

    def __init__(self, num_classes: int, embedding_dim: int) -> None:
        super().__init__()
        self.num_classes = int(num_classes)
        self.embedding = nn.Embedding(self.num_classes + 1, int(embedding_dim))

    @property
    def embedding_dim(self) -> int:
        return int(self.embedding.embedding_dim)

    def forward(self, labels: Tensor) -> Tensor:
        return self.embedding(labels.long())[:, None, :]

    def save_pretrained(self, folder: str | Path) -> None:
        """Write `config.json` + `diffusion_pytorch_model.safetensors` into `folder` (the `class_embedder/`
        subfolder of a prior)."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / CLASS_EMBEDDER_CONFIG).write_text(json.dumps(
            {"_class_name": "ClassEmbedder", "num_classes": self.num_classes, "embedding_dim": self.embedding_dim},
            indent=2) + "\n")
        save_file({"embedding.weight": self.embedding.weight.detach().contiguous().cpu()},
                  str(folder / CLASS_EMBEDDER_WEIGHTS))

    @classmethod
    def from_files(cls, config_file: str | Path | None, weights_file: str | Path) -> ClassEmbedder:
        """Load from the two files; the weight may also carry a CompVis prefix
        (`cond_stage_model.embedding.weight`)."""
        from safetensors.torch import load_file

        state = load_file(str(weights_file))
        keys = [k for k in state if k.endswith("embedding.weight")]
        if len(keys) != 1:
            raise ValueError(f"{weights_file}: expected one '*embedding.weight' tensor, found keys {sorted(state)}")
        weight = state[keys[0]]
        cfg = json.loads(Path(config_file).read_text()) if config_file is not None else {}
        n = int(cfg.get("num_classes", weight.shape[0] - 1))
        if weight.shape[0] != n + 1:
            raise ValueError(f"{weights_file}: embedding has {weight.shape[0]} rows, expected num_classes + 1 = "
                             f"{n + 1} (the last row is the null class)")
        if "embedding_dim" in cfg and int(cfg["embedding_dim"]) != weight.shape[1]:
            raise ValueError(f"{weights_file}: embedding dim {weight.shape[1]} != config {cfg['embedding_dim']}")
        emb = cls(n, weight.shape[1])
        emb.embedding.weight.data.copy_(weight)
        return emb

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> ClassEmbedder:
        folder = Path(folder)
        cfg = folder / CLASS_EMBEDDER_CONFIG
        return cls.from_files(cfg if cfg.exists() else None, folder / CLASS_EMBEDDER_WEIGHTS)


class Denoiser(nn.Module):
    """`forward(z [N,C,h,w], t [N], labels [N] long or None) -> raw network output [N, C or 2C, h, w]`; t holds
    the network's timestep values (`Prior.model_time`: long indices on VP, float σ·N on rectified flow).

    `num_classes` is the number of real classes (the null label is `num_classes`) where the model carries
    that convention, else None; `needs_labels` says whether a label must always be passed (the prior
    then uses the null label for unconditional calls)."""

    kind = "denoiser"

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    @property
    def config(self):
        return self.model.config

    @property
    def in_channels(self) -> int:
        return int(self.config.in_channels)

    @property
    def sample_size(self) -> tuple[int, int]:
        s = self.config.sample_size
        if s is None:
            raise ValueError(f"{type(self.model).__name__} config has no sample_size; cannot infer the latent shape")
        return (int(s), int(s)) if isinstance(s, int) else (int(s[0]), int(s[1]))

    @property
    def num_classes(self) -> int | None:
        return None

    @property
    def needs_labels(self) -> bool:
        return False

    def enable_gradient_checkpointing(self) -> None:
        self.model.enable_gradient_checkpointing()


class UNetDenoiser(Denoiser):
    """`UNet2DModel`, optionally class-conditional through its own `num_class_embeds` table."""

    kind = "unet"

    @property
    def needs_labels(self) -> bool:
        return self.config.num_class_embeds is not None or self.config.class_embed_type is not None

    def forward(self, z: Tensor, t: Tensor, labels: Tensor | None = None) -> Tensor:
        return self.model(z, t, class_labels=labels).sample


class CrossAttnUNetDenoiser(Denoiser):
    """`UNet2DConditionModel` conditioned on a class label through an external `ClassEmbedder`, whose
    output [N, 1, D] is the cross-attention context (`encoder_hidden_states`)."""

    kind = "unet_cond"

    def __init__(self, model: nn.Module, embedder: ClassEmbedder) -> None:
        super().__init__(model)
        dim = model.config.cross_attention_dim
        dim = dim[0] if isinstance(dim, (list, tuple)) else dim
        if int(dim) != embedder.embedding_dim:
            raise ValueError(f"class_embedder dim {embedder.embedding_dim} != the UNet's cross_attention_dim {dim}")
        self.embedder = embedder

    @property
    def num_classes(self) -> int | None:
        return self.embedder.num_classes

    @property
    def needs_labels(self) -> bool:
        return True

    def forward(self, z: Tensor, t: Tensor, labels: Tensor | None = None) -> Tensor:
        if labels is None:
            labels = torch.full((z.shape[0],), self.embedder.num_classes, device=z.device, dtype=torch.long)
        ctx = self.embedder(labels).to(z.dtype)
        return self.model(z, t, encoder_hidden_states=ctx).sample


class DiTDenoiser(Denoiser):
    """`DiTTransformer2DModel`: class labels through its AdaLN-Zero label table of `num_embeds_ada_norm + 1`
    rows (row `num_embeds_ada_norm` = null class, 1000 for DiT-XL-2-256); learned variance (out_channels
    = 2 × in_channels) is handled by the prior, which keeps the first half."""

    kind = "dit"

    @property
    def num_classes(self) -> int | None:
        n = self.config.num_embeds_ada_norm
        return int(n) if n is not None else None

    @property
    def needs_labels(self) -> bool:
        return True

    def forward(self, z: Tensor, t: Tensor, labels: Tensor | None = None) -> Tensor:
        if labels is None:
            labels = torch.full((z.shape[0],), int(self.num_classes), device=z.device, dtype=torch.long)
        return self.model(z, timestep=t, class_labels=labels).sample


class TextUNetDenoiser(Denoiser):
    """`UNet2DConditionModel` of Stable Diffusion 1.x/2.x: the prompt's context [N, 77, D] (`labels` here is a
    (hidden, pooled) pair; pooled unused) is the cross-attention input."""

    kind = "text_unet"

    def forward(self, z: Tensor, t: Tensor, labels: tuple[Tensor, Tensor | None]) -> Tensor:
        hidden, _ = labels
        return self.model(z, t, encoder_hidden_states=hidden.to(z.dtype)).sample


class SD3Denoiser(Denoiser):
    """`SD3Transformer2DModel` (MMDiT): joint context [N, 77 + 256, 4096] and pooled projections [N, 2048];
    `t` is passed as the model's float time."""

    kind = "sd3"

    def forward(self, z: Tensor, t: Tensor, labels: tuple[Tensor, Tensor | None]) -> Tensor:
        hidden, pooled = labels
        if pooled is None:
            raise ValueError("an SD3 transformer needs pooled text projections")
        return self.model(z, timestep=t, encoder_hidden_states=hidden.to(z.dtype),
                          pooled_projections=pooled.to(z.dtype)).sample


def wrap_denoiser(model: nn.Module, class_embedder: ClassEmbedder | None = None, *, text: bool = False) -> Denoiser:
    """The adapter for an in-memory diffusers denoiser (a `UNet2DConditionModel` needs `class_embedder`, or
    `text=True` for a Stable Diffusion UNet conditioned on prompts)."""
    name = type(model).__name__
    kind = DENOISER_CLASSES.get(name)
    if kind is None:
        raise ValueError(f"unsupported denoiser class {name!r}; supported: {sorted(DENOISER_CLASSES)}")
    if kind == "sd3":
        return SD3Denoiser(model)
    if kind == "unet_cond" and text:
        return TextUNetDenoiser(model)
    if kind == "unet_cond":
        if class_embedder is None:
            raise ValueError("a UNet2DConditionModel needs class_embedder=ClassEmbedder(num_classes, dim)")
        return CrossAttnUNetDenoiser(model, class_embedder)
    return DiTDenoiser(model) if kind == "dit" else UNetDenoiser(model)


def resolve_num_classes(denoiser: Denoiser, num_classes: int | None, where: str) -> int | None:
    """The number of real classes: explicit, or the model's own convention (the null label is always
    `num_classes`); errors name the model at `where` when the two disagree or no null class is left."""
    den_class = type(denoiser.model).__name__
    inferred = denoiser.num_classes
    if num_classes is not None and inferred is not None and int(num_classes) != inferred:
        raise ValueError(f"num_classes={num_classes} but the {den_class} has {inferred} classes "
                         f"(null class {inferred}); leave num_classes unset")
    n = int(num_classes) if num_classes is not None else inferred
    if denoiser.needs_labels and n is None:
        raise ValueError(f"{where}: the {den_class} is class-conditional; set num_classes (the "
                         f"number of real classes; label num_classes is the null class)")
    if isinstance(denoiser, UNetDenoiser) and n is not None:
        table = denoiser.config.num_class_embeds
        if not denoiser.needs_labels:
            raise ValueError(f"num_classes={n} given, but the UNet2DModel at {where} has no "
                             f"class embedding (num_class_embeds / class_embed_type unset)")
        if table is not None and n >= int(table):
            raise ValueError(f"num_classes={n} leaves no null class in the UNet's "
                             f"{table}-entry class table (need num_classes <= {int(table) - 1})")
    return n


def eps_from_output(out: Tensor, z: Tensor, t: Tensor, alphas_cumprod: Tensor, prediction_type: str) -> Tensor:
    """ε from a raw network output [N, C or 2C, h, w] at z [N, C, h, w] and times t [N] (docs/algorithm.md §1):
    with learned variance (2C channels: DiT, improved DDPM) ε is the first half; ε-prediction as is;
    x0-prediction ε = (z − α x0)/σ; v-prediction ε = σ z + α v."""
    c = z.shape[1]
    if out.shape[1] == 2 * c:
        out = out[:, :c]
    if prediction_type == "epsilon":
        return out
    ab = bcast(alphas_cumprod[t].to(z.dtype), z)
    if prediction_type == "sample":
        return eps_from_x0(z, out, ab)
    return (1 - ab).sqrt() * z + ab.sqrt() * out


def guided_eps(net: Callable[[Tensor, Tensor, Tensor | None], Tensor], z: Tensor, t: Tensor,
               cond: Tensor | None, guidance_scale: float, num_classes: int | None) -> Tensor:
    """ε_θ(z, t, c) through `net(z, t, labels) -> ε`. Unconditional models (`num_classes` None) ignore `cond`
    and g. Class-conditional: ε_u (null class `num_classes`) when `cond` is None; ε_c for g = 1; ε_u for
    g = 0; otherwise classifier-free guidance ε_u + g(ε_c − ε_u) from ONE call on [z; z] with labels
    [cond; null]."""
    t = t.to(z.device).long()
    if num_classes is None:
        return net(z, t, None)
    if cond is None:
        return net(z, t, torch.full((z.shape[0],), num_classes, device=z.device, dtype=torch.long))
    cond = cond.to(z.device).long()
    if guidance_scale == 1.0:
        return net(z, t, cond)
    null = torch.full_like(cond, num_classes)
    if guidance_scale == 0.0:
        return net(z, t, null)
    both = net(torch.cat([z, z]), torch.cat([t, t]), torch.cat([cond, null]))
    e_c, e_u = both.chunk(2)
    return e_u + guidance_scale * (e_c - e_u)

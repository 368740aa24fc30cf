"""Adapters that give every supported diffusers denoiser one call signature, `net(z, t, labels) -> output`
(the raw network output: ε, v or x0, learned-variance channels included), plus the external class
embedding of CompVis class-conditional LDMs (cin256-v2).

Supported denoisers (diffusers 0.42):

* `UNet2DModel`: `unet(z, t, class_labels=labels)`; labels optional (its own `num_class_embeds` table).
* `UNet2DConditionModel`: `unet(z, t, encoder_hidden_states=E(labels))` with E(labels) of shape [N, 1, D];
  labels required, E read from `class_embedder/`.
* `DiTTransformer2DModel` (Hub configs say `Transformer2DModel`): `dit(z, timestep=t, class_labels=labels)`;
  labels required (null class = `num_embeds_ada_norm`).

The class embedding E is `nn.Embedding(num_classes + 1, cross_attention_dim)` (row `num_classes` = the null
class used for classifier-free guidance), stored as a subfolder `class_embedder/` beside `unet/`:

    class_embedder/config.json                           {"_class_name": "ClassEmbedder", "num_classes": 1000,
                                                          "embedding_dim": 512}
    class_embedder/diffusion_pytorch_model.safetensors   {"embedding.weight": float [num_classes + 1, D]}

which is what a converted CompVis cin256-v2 checkpoint holds (its `cond_stage_model.embedding.weight`,
1001 × 512, with class 1000 the unconditional label).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor, nn

__all__ = ["ClassEmbedder", "Denoiser", "UNetDenoiser", "CrossAttnUNetDenoiser", "DiTDenoiser",
           "DENOISER_CLASSES", "CLASS_EMBEDDER_CONFIG", "CLASS_EMBEDDER_WEIGHTS"]

CLASS_EMBEDDER_CONFIG = "config.json"
CLASS_EMBEDDER_WEIGHTS = "diffusion_pytorch_model.safetensors"

#: diffusers class name → adapter kind; `Transformer2DModel` is the Hub name of DiT checkpoints
#: (diffusers remaps it to `DiTTransformer2DModel` when `norm_type == "ada_norm_zero"`).
DENOISER_CLASSES = {"UNet2DModel": "unet", "UNet2DConditionModel": "unet_cond",
                    "DiTTransformer2DModel": "dit", "Transformer2DModel": "dit"}


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
    def from_files(cls, config_file: str | Path | None, weights_file: str | Path) -> "ClassEmbedder":
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
    def from_pretrained(cls, folder: str | Path) -> "ClassEmbedder":
        folder = Path(folder)
        cfg = folder / CLASS_EMBEDDER_CONFIG
        return cls.from_files(cfg if cfg.exists() else None, folder / CLASS_EMBEDDER_WEIGHTS)


class Denoiser(nn.Module):
    """`forward(z [N,C,h,w], t [N] long, labels [N] long or None) -> raw network output [N, C or 2C, h, w]`.

    `num_classes` is the number of real classes (the null label is `num_classes`) where the model carries
    that convention, else None; `needs_labels` says whether a label must always be passed (the prior
    then uses the null label for unconditional calls)."""

    kind = "denoiser"

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    @property
    def config(self):  # noqa: ANN201
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

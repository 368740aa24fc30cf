"""Tiny random-weight Stable Diffusion pipelines for the tests (a pytest plugin: `pytest_plugins = ["sd_folders"]`,
folders built once per session): SD1-like (ε-prediction), SD2-like (v-prediction) and SD3-like (flow matching,
two CLIP encoders with projection, no T5) pipelines, each saved by the diffusers pipeline's own
`save_pretrained`, with a CLIP tokenizer built here from a 54-token character vocabulary (no download)."""

from pathlib import Path

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

MAX_TOKENS = 8          # the tiny tokenizers' model_max_length (SD: 77)
WIDTH = 16              # CLIP hidden width = the UNet's cross_attention_dim
SD_SPEC = {             # name → (latent shape, image shape, prediction type)
    "sd1": ((4, 8, 8), (3, 16, 16), "epsilon"),
    "sd2v": ((4, 8, 8), (3, 16, 16), "v_prediction"),
    "sd3": ((4, 8, 8), (3, 16, 16), "flow_prediction"),
}
CODEC = dict(block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4,
             down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)


def tiny_tokenizer():
    """A CLIPTokenizer over single characters (a–z, with and without the word-end mark) + BOS/EOS."""
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in "abcdefghijklmnopqrstuvwxyz":
        vocab[c] = len(vocab)
    for c in "abcdefghijklmnopqrstuvwxyz":
        vocab[c + "</w>"] = len(vocab)
    return transformers.CLIPTokenizer(vocab=vocab, merges=[], model_max_length=MAX_TOKENS)


def tiny_clip(seed: int, *, projection: bool = False, width: int = WIDTH):
    torch.manual_seed(seed)
    cfg = transformers.CLIPTextConfig(vocab_size=54, hidden_size=width, intermediate_size=2 * width,
                                      num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=MAX_TOKENS,
                                      projection_dim=width, bos_token_id=0, eos_token_id=1, pad_token_id=1)
    cls = transformers.CLIPTextModelWithProjection if projection else transformers.CLIPTextModel
    return cls(cfg).eval()


def tiny_vae(latent_channels: int = 4, **extra):
    torch.manual_seed(5)
    return diffusers.AutoencoderKL(in_channels=3, out_channels=3, latent_channels=latent_channels, sample_size=16,
                                   **CODEC, **extra)


def save_sd(root: Path, prediction_type: str = "epsilon") -> None:
    """A StableDiffusionPipeline folder: UNet2DConditionModel on 4×8×8 latents, CLIPTextModel, KL-f2 codec."""
    torch.manual_seed(3)
    unet = diffusers.UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(8, 16),
        norm_num_groups=4, cross_attention_dim=WIDTH, attention_head_dim=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
    sched = diffusers.DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                    clip_sample=False, set_alpha_to_one=False, steps_offset=1,
                                    prediction_type=prediction_type)
    pipe = diffusers.StableDiffusionPipeline(vae=tiny_vae(), text_encoder=tiny_clip(4), tokenizer=tiny_tokenizer(),
                                             unet=unet, scheduler=sched, safety_checker=None, feature_extractor=None,
                                             requires_safety_checker=False)
    pipe.save_pretrained(root)


def tiny_t5_tokenizer():
    """A T5 (unigram) tokenizer over single characters, with and without the word-start mark."""
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -1.0)]
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab += [(c, -1.0) for c in letters] + [("\u2581" + c, -1.5) for c in letters]
    return transformers.T5TokenizerFast(vocab=vocab, extra_ids=0)


def tiny_t5(seed: int = 9):
    torch.manual_seed(seed)
    cfg = transformers.T5Config(vocab_size=56, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4)
    return transformers.T5EncoderModel(cfg).eval()


def save_sd3(root: Path, t5: bool = False) -> None:
    """A StableDiffusion3Pipeline folder, without T5 unless `t5`: SD3Transformer2DModel on 4×8×8 latents,
    CLIP-L/G-like encoders with projection (16 + 16 → pooled 32), joint_attention_dim 32 (= the tiny T5's
    width), AutoencoderKL with a shift, FlowMatchEulerDiscreteScheduler (shift 3)."""
    torch.manual_seed(6)
    tr = diffusers.SD3Transformer2DModel(sample_size=8, patch_size=2, in_channels=4, out_channels=4, num_layers=1,
                                         attention_head_dim=8, num_attention_heads=2, joint_attention_dim=32,
                                         caption_projection_dim=16, pooled_projection_dim=32, pos_embed_max_size=8)
    vae = tiny_vae(scaling_factor=1.5305, shift_factor=0.0609)
    pipe = diffusers.StableDiffusion3Pipeline(
        transformer=tr, scheduler=diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0), vae=vae,
        text_encoder=tiny_clip(7, projection=True), tokenizer=tiny_tokenizer(),
        text_encoder_2=tiny_clip(8, projection=True), tokenizer_2=tiny_tokenizer(),
        text_encoder_3=tiny_t5() if t5 else None, tokenizer_3=tiny_t5_tokenizer() if t5 else None)
    pipe.save_pretrained(root)


@pytest.fixture(scope="session")
def sd_folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    out = {}
    for name, fn in (("sd1", lambda r: save_sd(r, "epsilon")), ("sd2v", lambda r: save_sd(r, "v_prediction")),
                     ("sd3", save_sd3)):
        root = tmp_path_factory.mktemp(name)
        fn(root)
        out[name] = str(root)
    return out


def save_text_pixel(root: Path) -> None:
    """A text-conditioned PIXEL prior (no codec): UNet2DConditionModel on 3×16×16 images + CLIP text encoder,
    in the pipeline layout (model_index.json names unet, text_encoder, tokenizer, scheduler)."""
    import json

    torch.manual_seed(10)
    diffusers.UNet2DConditionModel(
        sample_size=16, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(8, 16),
        norm_num_groups=4, cross_attention_dim=WIDTH, attention_head_dim=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D")).save_pretrained(root / "unet")
    tiny_clip(11).save_pretrained(root / "text_encoder")
    tiny_tokenizer().save_pretrained(root / "tokenizer")
    diffusers.DDPMScheduler().save_pretrained(root / "scheduler")
    (root / "model_index.json").write_text(json.dumps({
        "_class_name": "TextPixelPipeline", "unet": ["diffusers", "UNet2DConditionModel"],
        "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
        "scheduler": ["diffusers", "DDPMScheduler"]}))


@pytest.fixture(scope="session")
def text_pixel_folder(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = tmp_path_factory.mktemp("text_pixel")
    save_text_pixel(root)
    return str(root)


@pytest.fixture(scope="session")
def sd3_t5_folder(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = tmp_path_factory.mktemp("sd3_t5")
    save_sd3(root, t5=True)
    return str(root)

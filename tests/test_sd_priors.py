"""Text-conditioned Stable Diffusion priors (docs/algorithm.md §1): tiny SD1 (ε), SD2 (v) and SD3 (flow)
pipelines saved by diffusers and reloaded through `DiffusersPrior(path)`; the text context against diffusers'
own `encode_prompt`; the prompt cache; classifier-free guidance with the negative prompt; every method end to
end with a prompt, finite and batch-independent."""

from __future__ import annotations

import pytest
import torch
from sd_folders import SD_SPEC, WIDTH

import vipaint
from vipaint.operators import Inpainting
from vipaint.priors import DiffusersPrior
from vipaint.seeding import ImageRNG

pytest_plugins = ["sd_folders"]
diffusers = pytest.importorskip("diffusers")

NAMES = ("sd1", "sd2v", "sd3")
FAST = {"vipaint": dict(iterations=2, n_mc=1, refine_steps=2, refine_guidance=2.0, fit_guidance=1.5),
        "dps": dict(n_steps=3, guidance_scale=2.0), "psld": dict(n_steps=3, guidance_scale=2.0),
        "reddiff": dict(n_steps=3, guidance_scale=2.0), "ddnm": dict(n_steps=3, guidance_scale=2.0),
        "prior": dict(n_steps=3, guidance_scale=2.0),
        "repaint": dict(t_T=4, jump_length=2, jump_n_sample=2, guidance_scale=2.0),
        "copaint": dict(n_steps=3, guidance_scale=2.0)}
REPLACING = {"repaint": dict(t_T=4, jump_length=2, jump_n_sample=2), "copaint": dict(n_steps=3)}


@pytest.fixture(scope="module")
def sd_priors(sd_folders) -> dict[str, DiffusersPrior]:
    return {name: DiffusersPrior(sd_folders[name]) for name in NAMES}


@pytest.mark.parametrize("name", NAMES)
def test_sd_pipeline_loads_with_its_text_encoder(sd_priors, name):
    prior = sd_priors[name]
    latent, image, pred = SD_SPEC[name]
    sd3 = name == "sd3"
    assert prior.is_text_conditioned and prior.num_classes is None and prior.prediction_type == pred
    assert prior.text_encoder.kind == ("sd3" if sd3 else "clip") and prior.noise_path == ("flow" if sd3 else "vp")
    assert prior.denoiser_class == ("SD3Transformer2DModel" if sd3 else "UNet2DConditionModel")
    assert prior.latent_shape == latent and prior.image_shape == image
    assert (prior.scaling_factor, prior.shift_factor) == ((1.5305, 0.0609) if sd3 else (0.18215, 0.0))
    assert not sd3 or not prior.text_encoder.has_t5
    # the text encoders stay outside the module tree: not in the state dict, not moved by .to()
    assert not any(k.startswith("text") for k in prior.state_dict())


def test_context_matches_diffusers_encode_prompt(sd_folders, sd_priors):
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(sd_folders["sd1"], safety_checker=None)
    pos, neg = pipe.encode_prompt(["a red cat", "a dog"], "cpu", 1, True, negative_prompt=["blurry", "dark"])
    hidden, pooled = sd_priors["sd1"].text_encoder.encode(["a red cat", "a dog", "blurry", "dark"])
    assert pooled is None and hidden.shape == (4, 8, WIDTH)
    torch.testing.assert_close(hidden, torch.cat([pos, neg]), atol=1e-6, rtol=1e-6)


def test_sd3_context_matches_diffusers_encode_prompt(sd_folders, sd_priors):
    """CLIP-L + CLIP-G penultimate states, zero-padded to T5's width, then T5's zeros (T5 dropped); pooled
    projections concatenated."""
    pipe = diffusers.StableDiffusion3Pipeline.from_pretrained(sd_folders["sd3"], text_encoder_3=None, tokenizer_3=None)
    pos, neg, pos_pool, neg_pool = pipe.encode_prompt(["a red cat"], None, None, device="cpu",
                                                      negative_prompt=["blurry"])
    hidden, pooled = sd_priors["sd3"].text_encoder.encode(["a red cat", "blurry"])
    assert hidden.shape == (2, 8 + 256, 32) and pooled.shape == (2, 32)
    torch.testing.assert_close(hidden, torch.cat([pos, neg]), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(pooled, torch.cat([pos_pool, neg_pool]), atol=1e-6, rtol=1e-6)


def test_each_prompt_encoded_once_and_ids_per_pair(sd_folders):
    prior = DiffusersPrior(sd_folders["sd1"])
    calls = []
    encode = prior.text_encoder.encode
    prior.text_encoder.encode = lambda p, device="cpu": calls.append(list(p)) or encode(p, device)
    ids = prior.prompt_ids(["a cat", "a dog", "a cat"], "blurry")
    assert ids.tolist() == [0, 1, 0] and calls == [["a cat", "a dog", "blurry", ""]]
    again = prior.prompt_ids(["a dog", "a cow"], ["blurry", ""])
    assert again.tolist() == [1, 2] and calls[1:] == [["a cow"]]


def test_sd3_with_t5_matches_diffusers_and_drop_t5_gives_zeros(sd3_t5_folder):
    """T5 loaded through from_pretrained joins the context after the CLIP states; `drop_t5` leaves it out
    (zeros, as diffusers with text_encoder_3=None) and keeps the CLIP part and the pooled projections."""
    full, dropped = DiffusersPrior(sd3_t5_folder, max_sequence_length=12), DiffusersPrior(sd3_t5_folder, drop_t5=True,
                                                                                          max_sequence_length=12)
    assert full.text_encoder.has_t5 and not dropped.text_encoder.has_t5
    pipe = diffusers.StableDiffusion3Pipeline.from_pretrained(sd3_t5_folder)
    pos, _, pool, _ = pipe.encode_prompt(["a red cat"], None, None, device="cpu", do_classifier_free_guidance=False,
                                         max_sequence_length=12)
    hidden, pooled = full.text_encoder.encode(["a red cat"])
    torch.testing.assert_close(hidden, pos, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(pooled, pool, atol=1e-6, rtol=1e-6)
    h0, p0 = dropped.text_encoder.encode(["a red cat"])
    assert h0.shape == hidden.shape and (h0[:, 8:] == 0).all() and not (hidden[:, 8:] == 0).all()
    torch.testing.assert_close(h0[:, :8], hidden[:, :8])
    torch.testing.assert_close(p0, pooled)


@pytest.mark.parametrize("name", NAMES)
def test_guidance_uses_the_negative_prompt(sd_priors, name):
    prior = sd_priors[name]
    ids = prior.prompt_ids(["a cat", "a dog"], ["blurry", "dark"])
    z, t = torch.randn(3, 2, 4, 8, 8, generator=torch.Generator().manual_seed(0)), torch.tensor(400)
    with torch.no_grad():
        e_c, e_u, e_g = (prior.eps(z, t, ids, g) for g in (1.0, 0.0, 4.0))
        neg_only = prior.eps(z, t, prior.prompt_ids(["blurry", "dark"]), 1.0)
        empty = prior.eps(z, t, None)
    torch.testing.assert_close(e_u, neg_only)
    torch.testing.assert_close(e_g, e_u + 4.0 * (e_c - e_u), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(e_c, e_u) and not torch.allclose(e_c, empty)


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("method", list(FAST))
def test_every_method_with_a_prompt_is_finite_and_batch_independent(sd_priors, name, method):
    prior = sd_priors[name]
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, *prior.image_shape, generator=g) * 2 - 1
    mask = torch.ones(2, 1, 16, 16)
    mask[:, :, 4:12, 4:12] = 0
    op = Inpainting(mask, sigma_y=0.05)
    y = op.observe(x, ImageRNG(0, [0, 1], "observation"))
    cond = prior.prompt_ids(["a red cat", "a dog"], "blurry")
    both = vipaint.solve(method, prior, op, y, n_samples=2, seed=3, indices=[0, 1], cond=cond, **FAST[method])
    alone = vipaint.solve(method, prior, Inpainting(mask[1:], sigma_y=0.05), y[1:], n_samples=2, seed=3,
                          indices=[1], cond=cond[1:], **FAST[method])
    assert both.shape == (2, 2) + prior.image_shape and torch.isfinite(both).all()
    # VIPaint's default refinement (CG on the full-covariance likelihood, a central difference through the
    # decoder) amplifies float32 rounding that differs with the batch size to up to ~2e-3 on these random networks;
    # in float64 it is exactly batch-independent (test_vipaint_latent_batch_independence_is_exact_in_float64)
    tol = 5e-3 if method == "vipaint" else 1e-4
    torch.testing.assert_close(both[:, 1:], alone, atol=tol, rtol=tol)
    other = vipaint.solve(method, prior, Inpainting(mask[1:], sigma_y=0.05), y[1:], n_samples=2, seed=3,
                          indices=[1], cond=prior.prompt_ids(["a blue cow"], "blurry"), **FAST[method])
    assert not torch.allclose(alone, other), "the prompt does not reach the method"


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("method", list(REPLACING))
def test_replacing_peers_on_latent_sd_priors_count_codec_calls(sd_priors, name, method):
    """RePaint blends latents (docs/algorithm.md §10.3, eq. 10.3b: one encoder call for E(fill(y)), one decoder
    call for the output; "any" keeps more cells than "all"); CoPaint decodes ẑ0 at each network call (§10.6,
    eq. 10.6b)."""
    prior = sd_priors[name]
    mask = torch.ones(1, 1, 16, 16)
    mask[..., 3:12, 4:12] = 0                     # rows 3 and 11 cut latent cells: "all" and "any" differ there
    y = mask * (torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(4)) * 2 - 1)
    kw = dict(n_samples=1, seed=0, cond=prior.prompt_ids(["a cat"]), **REPLACING[method])
    res = vipaint.solve_full(method, prior, Inpainting(mask), y, **kw)
    assert torch.isfinite(res.samples).all() and res.samples.shape == (1, 1, 3, 16, 16)
    assert (res.n_decode, res.n_encode) == ((1, 1) if method == "repaint" else (res.nfe + 1, 0))
    if method == "repaint":
        other = vipaint.solve_full(method, prior, Inpainting(mask), y, latent_mask="any", **kw)
        assert not torch.allclose(res.samples, other.samples)


@pytest.mark.parametrize("method", list(REPLACING))
def test_pixel_space_peers_with_a_prompt_on_a_text_conditioned_pixel_prior(text_pixel_folder, method):
    """RePaint and CoPaint take prompts on a text-conditioned pixel prior too: finite, batch-independent,
    prompt-dependent."""
    prior = DiffusersPrior(text_pixel_folder)
    assert prior.is_text_conditioned and not prior.is_latent
    mask = torch.ones(2, 1, 16, 16)
    mask[..., 4:12, 4:12] = 0
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(2)) * 2 - 1
    op = Inpainting(mask, sigma_y=0.05)
    y = op.observe(x, ImageRNG(0, [0, 1], "observation"))
    kw = {**REPLACING[method], "guidance_scale": 2.0}
    cond = prior.prompt_ids(["a red cat", "a dog"], "blurry")
    both = vipaint.solve(method, prior, op, y, n_samples=2, seed=3, indices=[0, 1], cond=cond, **kw)
    alone = vipaint.solve(method, prior, Inpainting(mask[1:], sigma_y=0.05), y[1:], n_samples=2, seed=3,
                          indices=[1], cond=cond[1:], **kw)
    other = vipaint.solve(method, prior, Inpainting(mask[1:], sigma_y=0.05), y[1:], n_samples=2, seed=3,
                          indices=[1], cond=prior.prompt_ids(["a blue cow"], "blurry"), **kw)
    assert torch.isfinite(both).all()
    torch.testing.assert_close(both[:, 1:], alone, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(alone, other)


def test_prompt_on_a_prior_without_text_is_refused(tmp_path):
    torch.manual_seed(0)
    diffusers.UNet2DModel(sample_size=8, in_channels=1, out_channels=1, layers_per_block=1,
                          block_out_channels=(8, 16), norm_num_groups=4, down_block_types=("DownBlock2D",) * 2,
                          up_block_types=("UpBlock2D",) * 2).save_pretrained(tmp_path / "unet")
    diffusers.DDPMScheduler().save_pretrained(tmp_path / "scheduler")
    prior = DiffusersPrior(str(tmp_path))
    assert not prior.is_text_conditioned
    with pytest.raises(ValueError, match="not text-conditioned"):
        prior.prompt_ids(["a cat"])


def test_fit_guidance_reaches_the_elbo_and_refine_guidance_the_refinement(sd_priors):
    """VIPaint's two CFG scales act separately: `fit_guidance` changes the fit's objective trace,
    `refine_guidance` leaves it alone and changes only the refined samples."""
    prior = sd_priors["sd1"]
    mask = torch.ones(1, 1, 16, 16)
    mask[..., 4:12, 4:12] = 0
    op = Inpainting(mask, sigma_y=0.05)
    y = op.observe(torch.zeros(1, 3, 16, 16), ImageRNG(0, [0], "observation"))
    cond = prior.prompt_ids(["a red cat"], "blurry")

    def run(fit: float, refine: float):
        return vipaint.solve_full("vipaint", prior, op, y, n_samples=1, cond=cond, iterations=2, n_mc=1,
                                  refine_steps=2, fit_guidance=fit, refine_guidance=refine)

    base, fit3, ref3 = run(1.0, 1.0), run(3.0, 1.0), run(1.0, 3.0)
    assert not torch.allclose(base.traces["objective"], fit3.traces["objective"])
    torch.testing.assert_close(base.traces["objective"], ref3.traces["objective"])
    assert not torch.allclose(base.samples, ref3.samples)


def test_text_encoder_in_reduced_precision(sd_folders, sd_priors):
    """`text_dtype` loads the text encoder in bfloat16 through from_pretrained; the cached context is
    float32 and close to the float32 encoder's."""
    low = DiffusersPrior(sd_folders["sd1"], text_dtype="bfloat16", text_device="cpu")
    enc = low.text_encoder.encoders[0]
    assert next(enc.parameters()).dtype == torch.bfloat16 and low.text_encoder.device == torch.device("cpu")
    h_low, _ = low.text_encoder.encode(["a red cat"])
    h_ref, _ = sd_priors["sd1"].text_encoder.encode(["a red cat"])
    assert h_low.dtype == torch.float32
    torch.testing.assert_close(h_low, h_ref, atol=0.1, rtol=0.05)


def test_sd_hub_id_from_a_filled_cache(sd_folders, tmp_path, monkeypatch):
    """A Stable Diffusion Hub id found in the Hub cache (as `hf download` leaves it): the text encoder and
    tokenizer load through transformers' cache lookup too, offline."""
    import shutil

    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    commit = "0123456789abcdef0123456789abcdef01234567"
    entry = tmp_path / "models--vipaint-tests--tiny-sd2v"
    (entry / "refs").mkdir(parents=True)
    (entry / "refs" / "main").write_text(commit)
    shutil.copytree(sd_folders["sd2v"], entry / "snapshots" / commit)
    prior = DiffusersPrior("vipaint-tests/tiny-sd2v")
    assert prior.is_text_conditioned and prior.prediction_type == "v_prediction"
    ids = prior.prompt_ids(["a cat"])
    with torch.no_grad():
        ref = DiffusersPrior(sd_folders["sd2v"])
        z = torch.randn(1, 4, 8, 8)
        torch.testing.assert_close(prior.eps(z, 300, ids), ref.eps(z, 300, ref.prompt_ids(["a cat"])))


def test_sd3_eps_is_the_transformer_velocity_at_diffusers_timestep(sd_folders, sd_priors):
    """On the flow path, ε_θ at VP coordinates z equals x + (1 − σ)·v̂ with v̂ the transformer's output at the
    path state x = √(α² + σ²)·z, timestep σ·1000 and diffusers' own prompt embeddings (x = (1 − σ)x0 + σε)."""
    prior = sd_priors["sd3"]
    pipe = diffusers.StableDiffusion3Pipeline.from_pretrained(sd_folders["sd3"], text_encoder_3=None, tokenizer_3=None)
    pos, _, pooled, _ = pipe.encode_prompt(["a red cat"], None, None, device="cpu", do_classifier_free_guidance=False)
    t = torch.tensor([600])
    a, s = prior.path_alpha(t).double(), prior.path_sigma(t).double()
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(4))
    x = z * (a ** 2 + s ** 2).sqrt().float()
    with torch.no_grad():
        v = pipe.transformer(hidden_states=x, timestep=(s * 1000).float(), encoder_hidden_states=pos,
                             pooled_projections=pooled).sample
        eps = prior.eps(z, t, prior.prompt_ids(["a red cat"]))
    assert float(a + s) == pytest.approx(1.0)
    torch.testing.assert_close(eps, x + (1 - s.float()) * v, atol=1e-5, rtol=1e-4)


def test_sd2_v_eps_with_cfg_matches_the_pipelines_unet_call(sd_folders, sd_priors):
    """SD2-v: ε = σ_t z + α_t v̂ with v̂ guided as the pipeline guides it (negative prompt as unconditional)."""
    prior = sd_priors["sd2v"]
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(sd_folders["sd2v"], safety_checker=None)
    pos, neg = pipe.encode_prompt(["a red cat"], "cpu", 1, True, negative_prompt=["blurry"])
    t, z = 700, torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(5))
    ab = prior.alphas_cumprod[t].float()
    with torch.no_grad():
        v_c, v_u = pipe.unet(torch.cat([z, z]), t, encoder_hidden_states=torch.cat([pos, neg])).sample.chunk(2)
        eps = prior.eps(z, t, prior.prompt_ids(["a red cat"], "blurry"), 5.0)
    v = v_u + 5.0 * (v_c - v_u)
    torch.testing.assert_close(eps, (1 - ab).sqrt() * z + ab.sqrt() * v, atol=1e-5, rtol=1e-4)


def test_missing_t5_says_drop_t5(sd3_t5_folder, tmp_path):
    import shutil

    from vipaint.priors import PriorNotFoundError

    broken = tmp_path / "sd3"
    shutil.copytree(sd3_t5_folder, broken)
    shutil.rmtree(broken / "text_encoder_3")
    with pytest.raises(PriorNotFoundError, match="drop_t5: true"):
        DiffusersPrior(str(broken))
    assert not DiffusersPrior(str(broken), drop_t5=True).text_encoder.has_t5


def test_vipaint_latent_batch_independence_is_exact_in_float64(sd_folders):
    """No coupling between the images of a batch in VIPaint's default (covariance) refinement on a latent
    text prior: in float64, where batch-size-dependent rounding vanishes, image 1 alone equals image 1 of a
    batch of two exactly (in float32 they differ by rounding only, see the test above)."""
    prior = DiffusersPrior(sd_folders["sd1"]).to(torch.float64)
    g = torch.Generator().manual_seed(1)
    x = (torch.rand(2, *prior.image_shape, generator=g) * 2 - 1).double()
    mask = torch.ones(2, 1, 16, 16, dtype=torch.float64)
    mask[:, :, 4:12, 4:12] = 0
    y = Inpainting(mask, sigma_y=0.05).observe(x, ImageRNG(0, [0, 1], "observation"))
    cond = prior.prompt_ids(["a red cat", "a dog"], "blurry")
    both = vipaint.solve("vipaint", prior, Inpainting(mask, sigma_y=0.05), y, n_samples=2, seed=3, indices=[0, 1],
                         cond=cond, **FAST["vipaint"])
    alone = vipaint.solve("vipaint", prior, Inpainting(mask[1:], sigma_y=0.05), y[1:], n_samples=2, seed=3,
                          indices=[1], cond=cond[1:], **FAST["vipaint"])
    assert both.dtype == torch.float64
    torch.testing.assert_close(both[:, 1:], alone, atol=1e-12, rtol=0)

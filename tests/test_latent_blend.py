"""RePaint and CoPaint on latent priors (docs/algorithm.md §10.3, eq. 10.3b; §10.6, eq. 10.6b): the pixel mask on
the latent grid ("all" / "any"), the filled observation that is encoded, the codec-call counts, and, with an
identity codec, the latent variants equal to the pixel methods bit for bit."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import vipaint
from vipaint.methods.blend import fill_holes, latent_grid_mask
from vipaint.operators import Downsample, Inpainting
from vipaint.priors import SyntheticMixturePrior
from vipaint.seeding import ImageRNG


class _IdentityCodecPrior(SyntheticMixturePrior):
    """The analytic mixture declared latent: E and D are the identity (the base class's flat codec), so every
    latent code path runs, with the pixel prior's ε."""

    @property
    def is_latent(self) -> bool:
        return True


class _ShuffleCodecPrior(SyntheticMixturePrior):
    """A local codec: E = pixel-unshuffle (2 × 2 pixel blocks → 4C channels), D = pixel-shuffle, with the mixture's
    exact ε carried over, so latent blending is exact on whole blocks."""

    @property
    def is_latent(self) -> bool:
        return True

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        c, h, w = self._shape
        return (4 * c, h // 2, w // 2)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self._shape  # type: ignore[return-value]

    def eps_flat(self, z, t, cond=None, guidance_scale=1.0):
        return F.pixel_unshuffle(super().eps_flat(F.pixel_shuffle(z, 2), t, cond, guidance_scale), 2)

    def encode_flat(self, x):
        return F.pixel_unshuffle(x, 2)

    def decode_flat(self, z):
        return F.pixel_shuffle(z, 2)


def test_latent_grid_mask_all_and_any():
    # a 4×4 mask on a 2×2 latent grid (f = 2): blocks fully observed, partly observed (1 of 4, 3 of 4), empty
    mask = torch.tensor([[1., 1., 1., 0.],
                         [1., 1., 1., 1.],
                         [0., 0., 0., 0.],
                         [1., 0., 0., 0.]]).reshape(1, 1, 4, 4)
    assert latent_grid_mask(mask, (2, 2), "all").flatten().tolist() == [1.0, 0.0, 0.0, 0.0]
    assert latent_grid_mask(mask, (2, 2), "any").flatten().tolist() == [1.0, 1.0, 1.0, 0.0]
    assert latent_grid_mask(mask, (2, 2)).equal(latent_grid_mask(mask, (2, 2), "all"))     # default: "all"
    # non-square factors (f = 4 × 1) and f = 1 (the mask itself)
    assert latent_grid_mask(mask, (1, 4), "all").flatten().tolist() == [0.0, 0.0, 0.0, 0.0]
    assert latent_grid_mask(mask, (1, 4), "any").flatten().tolist() == [1.0, 1.0, 1.0, 1.0]
    assert latent_grid_mask(mask, (4, 4), "all") is mask
    with pytest.raises(ValueError, match="latent_mask"):
        latent_grid_mask(mask, (2, 2), "most")
    with pytest.raises(ValueError, match="do not split"):
        latent_grid_mask(mask, (3, 3))


def test_fill_holes_keeps_observed_pixels_and_fills_the_observed_mean():
    g = torch.Generator().manual_seed(0)
    mask = (torch.rand(3, 1, 6, 6, generator=g) > 0.5).float()
    mask[2] = 0                                                   # an image without observed pixels
    y = mask * torch.randn(3, 2, 6, 6, generator=g)
    filled = fill_holes(mask, y)
    m = mask.expand_as(y).bool()
    assert torch.equal(filled[m], y[m])                           # observed pixels bit for bit
    for b in range(2):
        for c in range(2):
            mean = y[b, c][m[b, c]].mean()
            torch.testing.assert_close(filled[b, c][~m[b, c]], mean.expand(int((~m[b, c]).sum())))
    assert (filled[2] == 0).all() and torch.equal(fill_holes(mask, y, "zero"), mask * y)
    with pytest.raises(ValueError, match="latent_fill"):
        fill_holes(mask, y, "median")


@pytest.fixture(scope="module")
def problem():
    pixel = SyntheticMixturePrior(image_shape=(2, 8, 8), n_components=2, seed=0)
    latent = _IdentityCodecPrior(image_shape=(2, 8, 8), n_components=2, seed=0)
    x = pixel.sample(2, torch.Generator().manual_seed(1))
    mask = (torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(2)) > 0.5).float()
    op = Inpainting(mask, sigma_y=0.05)
    return pixel, latent, op, op.observe(x, ImageRNG(0, range(2), "observation"))


@pytest.mark.parametrize("method,kw", [("repaint", dict(t_T=8, jump_length=3, jump_n_sample=2)),
                                       ("copaint", dict(n_steps=5)),
                                       ("copaint_tt", dict(n_steps=5, jump_length=2))])
def test_identity_codec_equals_the_pixel_method_bit_for_bit(problem, method, kw):
    """With E = D = identity, latent blending is pixel RePaint (f = 1: the latent mask is M, E(fill(y)) = y on
    the observed pixels) and CoPaint's decoded data term is the pixel one; clip_x0 is off on latent priors, so
    the pixel runs are unclamped."""
    pixel, latent, op, y = problem
    a = vipaint.solve_full(method, pixel, op, y, n_samples=3, seed=5, clip_x0=False, **kw)
    b = vipaint.solve_full(method, latent, op, y, n_samples=3, seed=5, **kw)
    assert torch.equal(a.samples, b.samples) and (a.nfe, a.n_backprop) == (b.nfe, b.n_backprop)
    assert (a.n_decode, a.n_encode) == (0, 0)
    # codec calls: RePaint encodes fill(y) once and decodes the output once; CoPaint decodes at every
    # network call (each loss evaluation) and once for the output
    assert (b.n_decode, b.n_encode) == ((1, 1) if method == "repaint" else (b.nfe + 1, 0))


@pytest.mark.parametrize("method", ["repaint", "copaint"])
def test_clip_x0_on_a_latent_prior_is_refused(problem, method):
    _, latent, op, y = problem
    with pytest.raises(ValueError, match="clip_x0"):
        vipaint.solve(method, latent, op, y, n_samples=1, clip_x0=True, t_T=2) if method == "repaint" else \
            vipaint.solve(method, latent, op, y, n_samples=1, clip_x0=True, n_steps=2)


def test_local_codec_pastes_known_cells_exactly_and_the_rules_differ_on_partial_cells():
    """With a local codec the output of a known cell is its own filled pixels: y on the observed ones, bit for
    bit. A cell with 1 to 3 of its 4 pixels observed is unknown under "all" (generated: its observed pixels are
    not y) and known under "any" (its holes get the fill c, the observed mean)."""
    prior = _ShuffleCodecPrior(image_shape=(1, 8, 8), n_components=2, seed=0)
    x = prior.sample(1, torch.Generator().manual_seed(1))
    mask = torch.ones(1, 1, 8, 8)
    mask[..., 2:6, 2:6] = 0                                       # a hole of whole 2×2 cells
    mask[..., 0, 0] = 0                                           # cell (0, 0): 3 of 4 pixels observed
    op = Inpainting(mask, sigma_y=0.0)
    y = op(x)
    kw = dict(t_T=6, jump_length=2, jump_n_sample=2)
    all_ = vipaint.solve_full("repaint", prior, op, y, n_samples=2, seed=0, **kw)
    any_ = vipaint.solve_full("repaint", prior, op, y, n_samples=2, seed=0, latent_mask="any", **kw)
    assert (all_.n_encode, all_.n_decode) == (1, 1) and torch.isfinite(all_.samples).all()
    whole = torch.ones(8, 8, dtype=torch.bool)
    whole[2:6, 2:6] = False
    whole[:2, :2] = False                                         # observed pixels of fully observed cells
    for res in (all_, any_):
        assert torch.equal(res.samples[..., whole], y[..., whole].expand(2, 1, 1, -1))
    corner_obs = torch.tensor([[0, 1], [1, 1]], dtype=torch.bool)
    out_all, out_any = all_.samples[..., :2, :2], any_.samples[..., :2, :2]
    assert not torch.equal(out_all[..., corner_obs], y[..., :2, :2][..., corner_obs].expand(2, 1, 1, -1))
    assert torch.equal(out_any[..., corner_obs], y[..., :2, :2][..., corner_obs].expand(2, 1, 1, -1))
    c = fill_holes(mask, y)[0, 0, 0, 0]
    assert torch.equal(out_any[..., 0, 0], c.expand(2, 1, 1)) and not torch.equal(out_all[..., 0, 0],
                                                                                    c.expand(2, 1, 1))


@pytest.mark.parametrize("method", ["repaint", "copaint", "copaint_tt"])
def test_non_inpainting_operators_are_refused_on_latent_priors(problem, method):
    _, latent, _, y = problem
    op = Downsample(factor=2, sigma_y=0.05)
    with pytest.raises(ValueError, match="only solves inpainting"):
        vipaint.solve(method, latent, op, op(y), n_samples=1)

"""Reading image files (vipaint/imageio.py, issue 22 cases 2 and 10): 16-bit and palette images keep their
range, and sizes are checked from the header before decoding."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vipaint.imageio import load_image


def _png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims width × height but holds no pixel data (a 'decompression bomb' probe)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)    # 1-bit grey
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))
    return path


def test_16bit_png_is_rescaled_not_clipped(tmp_path):
    """Case 2: a 16-bit PNG maps 0..65535 to [−1, 1] (it was clipped at 255: 26 % of the pixels white)."""
    ramp = np.linspace(0, 65535, 64 * 64).round().astype(np.uint16).reshape(64, 64)
    Image.fromarray(ramp).save(tmp_path / "i16.png")
    assert Image.open(tmp_path / "i16.png").mode.startswith("I;16")
    Image.fromarray((ramp // 257).astype(np.uint8)).save(tmp_path / "i8.png")
    for channels in (None, 1, 3):
        x16 = load_image(str(tmp_path / "i16.png"), where="t", channels=channels)
        x8 = load_image(str(tmp_path / "i8.png"), where="t", channels=channels)
        assert x16.shape == x8.shape
        assert float((x16 >= 1.0).float().mean()) < 0.001
        assert torch.allclose(x16, x8, atol=2.0 / 255)
    x16 = load_image(str(tmp_path / "i16.png"), where="t", size=16, channels=1)   # resized in float, still in range
    x8 = load_image(str(tmp_path / "i8.png"), where="t", size=16, channels=1)
    assert x16.min() >= -1 and x16.max() <= 1 and torch.allclose(x16, x8, atol=0.03)


def test_palette_png_goes_through_its_palette(tmp_path):
    idx = (np.arange(16 * 16).reshape(16, 16) % 3).astype(np.uint8)
    img = Image.fromarray(idx, mode="P")
    img.putpalette([0, 0, 0, 255, 255, 255, 51, 51, 51] + [0] * 759)
    img.save(tmp_path / "p.png")
    x = load_image(str(tmp_path / "p.png"), where="t", channels=1)
    expect = torch.tensor([0.0, 255.0, 51.0])[torch.from_numpy(idx).long()] / 127.5 - 1
    assert torch.equal(x[0], expect)


def test_size_limit_is_checked_from_the_header(tmp_path, monkeypatch):
    """Case 10: huge dimensions are refused before decoding, with a clear message (also past PIL's limit)."""
    with pytest.raises(ValueError, match=r"big\.png: the image is 13000×13000 = 169000000 pixels.*VIPAINT_MAX_PIXELS"):
        load_image(str(_png_header_only(tmp_path / "big.png", 13000, 13000)), where="big.png")
    with pytest.raises(ValueError, match=r"huge\.png: the image is too large to decode safely"):
        load_image(str(_png_header_only(tmp_path / "huge.png", 30000, 30000)), where="huge.png")
    Image.fromarray(np.zeros((40, 40), np.uint8)).save(tmp_path / "small.png")
    monkeypatch.setenv("VIPAINT_MAX_PIXELS", "1000")
    with pytest.raises(ValueError, match="40×40 = 1600 pixels, more than the limit of 1000"):
        load_image(str(tmp_path / "small.png"), where="small.png")

"""Lossy image codecs: shapes, quality/bytes trade-offs, down/pack equivalences, determinism, bad input."""

from __future__ import annotations

import json
import math
import struct

import pytest
import torch

from softlabels.io import save_tensors
from softlabels.sets import image_codecs
from softlabels.sets.codecs import IMAGE_CODECS, Encoded, JpegCodec, PackCodec, decode_images, image_codec
from softlabels.sets.lossy_codecs import downsample, upsample
from softlabels.validation import CorruptFileError

LOSSY = ["jpeg:quality=75", "webp:quality=75", "down:factor=2,mode=area", "down:factor=4,mode=nearest",
         "pack:factor=2,codec=zlib", "pack:factor=2,codec=png", "pack:factor=4,codec=raw"]


def batch(n: int = 6, c: int = 1, *, seed: int = 0) -> torch.Tensor:
    """Seeded 28x28 images: random blobs (noise upsampled 4x) plus a little noise, like small photos."""
    g = torch.Generator().manual_seed(seed)
    blobs = torch.nn.functional.interpolate(torch.rand(n, c, 7, 7, generator=g) * 255, size=(28, 28),
                                            mode="bilinear", align_corners=False)
    noise = torch.randn(n, c, 28, 28, generator=g) * 12
    return (blobs + noise).round().clamp(0, 255).to(torch.uint8)


def smooth(c: int = 1) -> torch.Tensor:
    """One smooth 28x28 image (products of slow sines), each channel a flipped copy."""
    i = torch.arange(28.0)
    img = (128 + 90 * torch.sin(i / 6)[:, None] * torch.cos(i / 9)[None, :]).round().to(torch.uint8)
    chans = [img, img.flip(0), img.flip(1)][:c]
    return torch.stack(chans)[None]


def psnr(decoded: torch.Tensor, original: torch.Tensor) -> float:
    """PSNR = 10 * log10(255^2 / MSE) in dB, MSE the mean squared pixel error."""
    mse = float(((decoded.double() - original.double()) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(255**2 / mse)


def round_trip(spec: str, images: torch.Tensor) -> tuple[Encoded, torch.Tensor]:
    codec = image_codec(spec)
    enc = codec.encode(images)
    return enc, codec.decode(enc)


# ------------------------------------------------------------------------------------------- registry


def test_lossy_codecs_are_registered_everywhere() -> None:
    assert {"jpeg", "webp", "down", "pack"} <= set(IMAGE_CODECS.names())
    assert image_codecs.IMAGE_CODECS is IMAGE_CODECS
    via_base = image_codecs.image_codec("jpeg:quality=50")
    assert via_base == image_codec("jpeg:quality=50") == JpegCodec(quality=50)


@pytest.mark.parametrize(("spec", "canonical"), [
    ("jpeg", "jpeg:quality=75"),
    (" jpeg : quality = 30 ", "jpeg:quality=30"),
    ("webp", "webp:quality=75"),
    ("down", "down:factor=2,mode=area"),
    ("down:mode=nearest,factor=4", "down:factor=4,mode=nearest"),
    ("pack", "pack:factor=2,codec=zlib"),
    ("pack:codec=png", "pack:factor=2,codec=png"),
])
def test_canonical_specs(spec: str, canonical: str) -> None:
    codec = image_codec(spec)
    assert codec.spec == canonical and image_codec(canonical) == codec
    assert codec.encode(smooth()).codec == canonical


# ----------------------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("spec", LOSSY)
@pytest.mark.parametrize("c", [1, 3])
def test_decode_has_the_original_shape_and_dtype(spec: str, c: int) -> None:
    images = batch(5, c, seed=c)
    enc, dec = round_trip(spec, images)
    assert dec.shape == images.shape and dec.dtype == torch.uint8
    assert torch.equal(decode_images(enc), dec)
    assert psnr(dec, images) > 15  # lossy, but still the same images


@pytest.mark.parametrize("spec", LOSSY)
def test_encode_is_deterministic(spec: str) -> None:
    images = batch(6, 3, seed=7)
    a, b = image_codec(spec).encode(images), image_codec(spec).encode(images.clone())
    assert a.codec == b.codec and a.meta == b.meta and set(a.tensors) == set(b.tensors)
    for k in a.tensors:
        assert a.tensors[k].dtype == b.tensors[k].dtype and torch.equal(a.tensors[k], b.tensors[k]), k


@pytest.mark.parametrize("spec", ["jpeg:quality=20", "webp:quality=20", "pack:factor=2,codec=png"])
def test_payload_bytes_match_the_file(tmp_path, spec: str) -> None:
    enc = image_codec(spec).encode(batch(3, 3))
    data = save_tensors(tmp_path / "images.safetensors", enc.tensors).read_bytes()
    hlen = struct.unpack("<Q", data[:8])[0]
    assert len(data) == 8 + hlen + enc.nbytes
    assert set(json.loads(data[8:8 + hlen])) - {"__metadata__"} == set(enc.tensors)


# ------------------------------------------------------------------------------------ quality and bytes


@pytest.mark.parametrize("name", ["jpeg", "webp"])
@pytest.mark.parametrize("c", [1, 3])
def test_psnr_rises_with_quality(name: str, c: int) -> None:
    img = smooth(c)
    scores = [psnr(round_trip(f"{name}:quality={q}", img)[1], img) for q in (5, 30, 70, 95)]
    assert scores == sorted(scores) and len(set(scores)) == len(scores), scores
    assert scores[-1] > 35


@pytest.mark.parametrize("name", ["jpeg", "webp"])
def test_bytes_shrink_as_quality_drops(name: str) -> None:
    images = batch(6, 1)
    sizes = [image_codec(f"{name}:quality={q}").encode(images).nbytes for q in (95, 70, 30, 5)]
    assert sizes == sorted(sizes, reverse=True) and len(set(sizes)) == 4, sizes
    assert sizes[1] < 6 * 28 * 28  # at quality 70 the noisy blobs already beat raw


def test_jpeg_and_webp_streams_and_lengths() -> None:
    for name, magic in (("jpeg", b"\xff\xd8\xff"), ("webp", b"RIFF")):
        enc = image_codec(name).encode(batch(4, 3))
        lengths, data = enc.tensors["lengths"], enc.tensors["data"].numpy().tobytes()
        assert lengths.shape == (4,) and enc.nbytes == len(data) + 4 * lengths.element_size()
        starts = [0, *lengths.long().cumsum(0).tolist()[:-1]]
        assert all(data[s:s + len(magic)] == magic for s in starts)


def test_bytes_shrink_as_the_down_factor_grows() -> None:
    images = batch(6, 3)
    sizes = [image_codec(f"down:factor={f}").encode(images).nbytes for f in (2, 4, 7, 14)]
    assert sizes == [6 * 3 * (28 // f) ** 2 for f in (2, 4, 7, 14)]


# ---------------------------------------------------------------------------------------- downsampling


def test_down_on_block_constant_images() -> None:
    g = torch.Generator().manual_seed(3)
    blocks = torch.randint(0, 256, (4, 3, 14, 14), generator=g, dtype=torch.uint8)
    images = blocks.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
    for mode in ("area", "nearest"):  # a constant block's mean is its top-left pixel
        enc = image_codec(f"down:factor=2,mode={mode}").encode(images)
        assert torch.equal(enc.tensors["pixels"], blocks)
        assert enc.nbytes == 4 * 3 * 28 * 28 // 4
    # on a smooth block-constant image bilinear upsampling lands close to the original
    small = smooth(3)[:, :, ::2, ::2]
    images = small.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
    enc, dec = round_trip("down:factor=2,mode=area", images)
    assert torch.equal(enc.tensors["pixels"], small)
    assert psnr(dec, images) > 35 and int((dec.int() - images.int()).abs().max()) <= 12


def test_downsample_and_upsample_by_hand() -> None:
    rows = [[0, 1, 7, 7], [0, 1, 7, 8], [1, 2, 0, 0], [2, 2, 0, 255]]
    x = torch.tensor(rows, dtype=torch.uint8)[None, None]
    assert downsample(x, 2).flatten().tolist() == [1, 7, 2, 64]  # means 0.5 -> 1, 7.25, 1.75, 63.75
    assert downsample(x, 2, "nearest").flatten().tolist() == [0, 7, 1, 0]
    up = upsample(torch.tensor([[[[0, 100]]]], dtype=torch.uint8), (1, 4))
    assert up.flatten().tolist() == [0, 25, 75, 100]  # align_corners=False: sources at 0.25 / 0.75


@pytest.mark.parametrize("n", [1, 4, 5, 6, 17])
@pytest.mark.parametrize("factor", [2, 4])
def test_pack_decodes_like_down_with_lossless_inner(n: int, factor: int) -> None:
    images = batch(n, 3, seed=n)
    down = round_trip(f"down:factor={factor},mode=area", images)[1]
    for inner in ("raw", "png", "zlib"):
        enc, dec = round_trip(f"pack:factor={factor},codec={inner}", images)
        assert torch.equal(dec, down), inner
        assert int(enc.tensors["count"][0]) == n
    packed = image_codec(f"pack:factor={factor},codec=raw").encode(images).tensors["pixels"]
    assert packed.shape == (math.ceil(n / factor**2), 3, 28, 28)


def test_pack_tile_layout_and_padding() -> None:
    images = batch(6, 1, seed=11)
    small = downsample(images, 2)
    enc = image_codec("pack:factor=2,codec=raw").encode(images)
    packed = enc.tensors["pixels"]
    assert packed.shape == (2, 1, 28, 28)
    for k in range(8):  # image k -> packed image k // 4, tile row (k % 4) // 2, tile column k % 2
        m, i, j = k // 4, (k % 4) // 2, k % 2
        tile = packed[m, :, 14 * i:14 * (i + 1), 14 * j:14 * (j + 1)]
        assert torch.equal(tile, small[k]) if k < 6 else (tile == 0).all()
    assert enc.nbytes == 2 * 28 * 28 + enc.tensors["count"].element_size()
    assert image_codec("pack:factor=2,codec=zlib").encode(images).nbytes < enc.nbytes


# ------------------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize(("spec", "match"), [
    ("jpeg:quality=0", "quality must be an integer from 1"),
    ("jpeg:quality=101", "quality must be an integer from 1"),
    ("webp:quality=0", "quality must be an integer from 1"),
    ("jpeg:quality=high", "quality must be an integer"),
    ("down:factor=1", r"factor must be an integer >= 2"),
    ("pack:factor=1", r"factor must be an integer >= 2"),
    ("down:mode=bicubic", "mode must be one of area, nearest"),
    ("pack:codec=jpeg", "codec must be one of raw, png, zlib"),
    ("jpeg:qualty=5", "Did you mean 'quality'"),
])
def test_bad_params(spec: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        image_codec(spec)


def test_bad_direct_construction() -> None:
    with pytest.raises(ValueError, match="quality"):
        JpegCodec(quality=0)
    with pytest.raises(ValueError, match="factor"):
        PackCodec(factor=1)


@pytest.mark.parametrize("spec", ["down:factor=3", "pack:factor=3,codec=raw"])
def test_factor_must_divide_the_image_size(spec: str) -> None:
    with pytest.raises(ValueError, match=r"28x28 .* by 3.*try factor=2 \(factors dividing both: 2, 4, 7, 14"):
        image_codec(spec).encode(batch(2))
    with pytest.raises(ValueError, match="no factor >= 2 divides both"):
        image_codec(spec).encode(torch.zeros(1, 1, 7, 9, dtype=torch.uint8))


@pytest.mark.parametrize("name", ["jpeg", "webp"])
def test_jpeg_and_webp_reject_four_channels(name: str) -> None:
    with pytest.raises(ValueError, match="1-channel .* or 3-channel .* got 4 channels"):
        image_codec(name).encode(torch.zeros(1, 4, 8, 8, dtype=torch.uint8))


def _replace(enc: Encoded, **tensors: torch.Tensor) -> Encoded:
    return Encoded(enc.codec, {**enc.tensors, **tensors}, enc.meta)


@pytest.mark.parametrize("name", ["jpeg", "webp"])
def test_corrupt_stream_payloads(name: str) -> None:
    codec = image_codec(name)
    enc = codec.encode(batch(3, 3))
    data, lengths = enc.tensors["data"], enc.tensors["lengths"]
    bad = [
        _replace(enc, data=data[:-5].clone()),  # truncated
        _replace(enc, lengths=lengths[:2].clone()),  # one length short
        _replace(enc, lengths=lengths.float()),
        _replace(enc, data=data.to(torch.int16)),
        _replace(enc, data=torch.zeros_like(data)),  # right lengths, garbage streams
        Encoded(enc.codec, {"data": data}, enc.meta),  # a tensor missing
        Encoded(enc.codec, enc.tensors, {"shape": "3,3,28,27"}),  # streams of another size
        Encoded(enc.codec, enc.tensors, {"shape": "3,4,28,28"}),
    ]
    other = image_codec("webp" if name == "jpeg" else "jpeg").encode(batch(3, 3))
    bad.append(Encoded(enc.codec, other.tensors, enc.meta))  # the other format's streams
    if name == "jpeg":  # JPEG records its channels; WebP always decodes to RGB
        bad.append(Encoded(enc.codec, enc.tensors, {"shape": "3,1,28,28"}))
    for e in bad:
        with pytest.raises(CorruptFileError):
            codec.decode(e)


def test_corrupt_down_and_pack_payloads() -> None:
    images = batch(5, 1)
    down = image_codec("down:factor=2")
    enc = down.encode(images)
    for e in (_replace(enc, pixels=enc.tensors["pixels"].int()),
              _replace(enc, pixels=enc.tensors["pixels"][:4].clone()),
              Encoded(enc.codec, enc.tensors, {"shape": "5,1,27,28"})):
        with pytest.raises(CorruptFileError):
            down.decode(e)
    pack = image_codec("pack:factor=2,codec=zlib")
    enc = pack.encode(images)
    data = enc.tensors["data"]
    for e in (_replace(enc, count=torch.tensor([4], dtype=torch.uint8)),
              _replace(enc, count=torch.tensor([5], dtype=torch.int64)),
              Encoded(enc.codec, {"data": data}, enc.meta),
              _replace(enc, data=data[:-3].clone()),
              Encoded(enc.codec, enc.tensors, {"shape": "9,1,28,28"})):  # disagrees with the count
        with pytest.raises(CorruptFileError):
            pack.decode(e)
    with pytest.raises(ValueError, match="decode it with"):
        image_codec("down:factor=4").decode(down.encode(images))

"""Codecs for compressed training sets: exact round trips, error bounds, byte counts and bad input."""

from __future__ import annotations

import json
import math
import struct

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from softlabels.io import load_tensors, save_tensors
from softlabels.registry import UnknownNameError
from softlabels.sets.codecs import (
    IMAGE_CODECS,
    LABEL_CODECS,
    Encoded,
    decode_images,
    decode_labels,
    encoded_from_safetensors_dict,
    encoded_to_safetensors_dict,
    image_codec,
    label_codec,
    payload_nbytes,
    smallest_uint_dtype,
)
from softlabels.validation import CorruptFileError

# A hand-written 2x4 label matrix with exactly representable entries.
L24 = torch.tensor([[0.125, 0.5, 0.125, 0.25],
                    [0.25, 0.25, 0.5, 0.0]])


def stochastic(n: int, c: int, *, seed: int = 0, scale: float = 3.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, c, generator=g) * scale).softmax(dim=1)


def label_specs(c: int) -> list[str]:
    """Every label codec with a spread of parameters valid for C = c."""
    specs = ["fp32", "fp16", "bf16", "hard"]
    specs += [f"topk:k={k},values={v},renorm={r}" for k in sorted({1, min(3, c), c})
              for v in ("fp32", "fp16", "int8") for r in (0, 1)]
    specs += [f"quant:bits={b},renorm={r}" for b in (8, 4, 2) for r in (0, 1)]
    return specs


def header_length(data: bytes) -> int:
    return struct.unpack("<Q", data[:8])[0]


# ------------------------------------------------------------------------------------------------ basics


def test_registries_list_every_codec() -> None:
    assert LABEL_CODECS.names() == ["bf16", "fp16", "fp32", "hard", "projector", "quant", "topk"]
    assert IMAGE_CODECS.names() == ["down", "float", "jpeg", "pack", "png", "raw", "webp", "zlib"]


@pytest.mark.parametrize(("max_value", "dtype"), [
    (0, torch.uint8), (255, torch.uint8), (256, torch.int16), (299, torch.int16), (32767, torch.int16),
    (32768, torch.int32), (2**31 - 1, torch.int32), (2**31, torch.int64),
])
def test_smallest_uint_dtype(max_value: int, dtype: torch.dtype) -> None:
    assert smallest_uint_dtype(max_value) == dtype


@pytest.mark.parametrize(("bad", "exc"), [(-1, ValueError), (1.5, TypeError), (True, TypeError)])
def test_smallest_uint_dtype_rejects(bad: object, exc: type[Exception]) -> None:
    with pytest.raises(exc):
        smallest_uint_dtype(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(("spec", "canonical"), [
    ("fp16", "fp16"),
    ("  hard ", "hard"),
    ("topk:k=5", "topk:k=5,values=fp32,renorm=0"),
    (" topk : renorm = 1 , values=fp16, k=5 ", "topk:k=5,values=fp16,renorm=1"),
    ("quant", "quant:bits=8,renorm=0"),
    ("quant:bits=4", "quant:bits=4,renorm=0"),
    ("quant:renorm=1,bits=2", "quant:bits=2,renorm=1"),
])
def test_spec_parsing_is_canonical(spec: str, canonical: str) -> None:
    codec = label_codec(spec)
    assert codec.spec == canonical
    assert label_codec(canonical) == codec
    assert codec.encode(stochastic(3, 6)).codec == canonical


def test_image_specs() -> None:
    assert [image_codec(s).spec for s in ("raw", " png ", "zlib")] == ["raw", "png", "zlib"]


# ---------------------------------------------------------------------------------- lossless round trips


@pytest.mark.parametrize("spec", ["fp32", "topk:k=7,values=fp32,renorm=0"])
def test_lossless_label_codecs_are_bit_exact(spec: str) -> None:
    x = stochastic(9, 7, seed=1)
    x[0] = 0.0  # an all-zero row and exact ties
    x[1] = torch.tensor([0.25, 0.25, 0.0, 0.25, 0.25, 0.0, 0.0])
    dec = label_codec(spec).decode(label_codec(spec).encode(x))
    assert dec.dtype == torch.float32 and torch.equal(dec, x)


def test_hard_is_bit_exact_on_one_hot() -> None:
    x = torch.nn.functional.one_hot(torch.tensor([3, 0, 9, 9, 4]), 10).float()
    codec = label_codec("hard")
    assert torch.equal(codec.decode(codec.encode(x)), x)


def test_encode_copies_its_input() -> None:
    x = stochastic(4, 5)
    ref = x.clone()
    encs = {s: label_codec(s).encode(x) for s in ("fp32", "topk:k=5", "hard")}
    x.fill_(0.0)
    for spec, enc in encs.items():
        expected = ref if spec != "hard" else torch.nn.functional.one_hot(ref.argmax(1), 5).float()
        assert torch.equal(label_codec(spec).decode(enc), expected)


@pytest.mark.parametrize("spec", ["raw", "png", "zlib"])
@pytest.mark.parametrize("shape", [(3, 1, 28, 28), (2, 3, 8, 5), (2, 4, 3, 7), (1, 1, 1, 1)])
def test_image_codecs_are_bit_exact(spec: str, shape: tuple[int, ...]) -> None:
    g = torch.Generator().manual_seed(sum(shape))
    images = torch.randint(0, 256, shape, generator=g, dtype=torch.uint8)
    images[0, :, 0, :] = 0  # a run of zeros and the extreme values
    images.view(-1)[-1] = 255
    codec = image_codec(spec)
    enc = codec.encode(images)
    dec = codec.decode(enc)
    assert dec.dtype == torch.uint8 and torch.equal(dec, images)
    assert torch.equal(decode_images(enc), images)


def test_image_codecs_accept_non_contiguous_input() -> None:
    nhwc = torch.randint(0, 256, (2, 6, 5, 3), dtype=torch.uint8)
    images = nhwc.permute(0, 3, 1, 2)
    for spec in ("raw", "png", "zlib"):
        assert torch.equal(decode_images(image_codec(spec).encode(images)), images)


def test_compressed_image_codecs_shrink_redundant_images() -> None:
    images = torch.zeros(10, 1, 28, 28, dtype=torch.uint8)
    images[:, :, 10:18, 10:18] = 200
    raw = image_codec("raw").encode(images).nbytes
    assert raw == 10 * 28 * 28
    assert image_codec("zlib").encode(images).nbytes < raw // 20
    assert image_codec("png").encode(images).nbytes < raw // 2


# ------------------------------------------------------------------------------------ lossy error bounds


def test_fp16_and_bf16_relative_error_bounds() -> None:
    x = stochastic(50, 30, seed=2, scale=6.0)
    x[0] = 0.0
    x[0, :4] = torch.tensor([1e-7, 3e-6, 2.0**-14, 1.0 / 3.0])  # fp16 subnormals, its smallest normal
    x64 = x.double()
    fp16 = decode_labels(label_codec("fp16").encode(x)).double()
    normal = x64 >= 2.0**-14
    assert ((fp16 - x64).abs()[normal] <= 2.0**-11 * x64[normal]).all()
    assert ((fp16 - x64).abs()[~normal] <= 2.0**-25).all()  # half the subnormal spacing
    bf16 = decode_labels(label_codec("bf16").encode(x)).double()
    assert ((bf16 - x64).abs() <= 2.0**-8 * x64).all()
    assert not torch.equal(fp16, x64) and not torch.equal(bf16, x64)  # the bounds are not vacuous


@pytest.mark.parametrize("bits", [8, 4, 2])
def test_quant_absolute_error_bound(bits: int) -> None:
    x = stochastic(40, 13, seed=bits, scale=2.0)
    dec = decode_labels(label_codec(f"quant:bits={bits}").encode(x))
    err = (dec.double() - x.double()).abs()
    bound = 0.5 / (2**bits - 1)
    assert float(err.max()) <= bound + 1e-7
    assert float(err.max()) > 0.5 * bound  # the grid really is 2^bits - 1 levels, not finer
    levels = dec.double() * (2**bits - 1)
    assert torch.allclose(levels, levels.round(), atol=1e-4)


def test_topk_int8_error_bound_and_exact_zeros() -> None:
    x = stochastic(30, 12, seed=3)
    k = 4
    codec = label_codec(f"topk:k={k},values=int8")
    enc = codec.encode(x)
    dec = codec.decode(enc)
    kept = torch.zeros_like(x, dtype=torch.bool).scatter_(1, enc.tensors["indices"].long(), True)
    assert torch.equal(kept, torch.zeros_like(kept).scatter_(1, x.topk(k, dim=1).indices, True))
    assert float((dec.double() - x.double()).abs()[kept].max()) <= 0.5 / 255 + 1e-7
    assert (dec[~kept] == 0).all()
    assert enc.tensors["values"].dtype == torch.uint8
    assert torch.equal(enc.tensors["values"], torch.round(x.gather(1, enc.tensors["indices"].long()) * 255)
                       .to(torch.uint8))


# ----------------------------------------------------------------------------- hand-written expectations


def test_topk_hand_written() -> None:
    enc = label_codec("topk:k=2").encode(L24)
    # row 1: 0.25 at classes 0 and 1 tie; the lower class index wins
    assert enc.tensors["indices"].tolist() == [[1, 3], [2, 0]]
    assert enc.tensors["values"].tolist() == [[0.5, 0.25], [0.5, 0.25]]
    assert torch.equal(decode_labels(enc), torch.tensor([[0.0, 0.5, 0.0, 0.25], [0.25, 0.0, 0.5, 0.0]]))
    renorm = decode_labels(label_codec("topk:k=2,renorm=1").encode(L24))
    third = torch.tensor(1.0) / 3
    expected = torch.tensor([[0.0, 2 * third, 0.0, third], [third, 0.0, 2 * third, 0.0]])
    torch.testing.assert_close(renorm, expected, rtol=0, atol=1e-7)
    torch.testing.assert_close(renorm.sum(1), torch.ones(2), rtol=0, atol=1e-6)


def test_quant_2bit_hand_written_packing() -> None:
    enc = label_codec("quant:bits=2").encode(L24)
    # levels round(3p): row 0 -> 0 2 0 1, row 1 -> 1 1 2 0; four per byte, first value in the high bits
    assert enc.tensors["packed"].tolist() == [0b00_10_00_01, 0b01_01_10_00]
    third = torch.tensor(1.0) / 3
    expected = torch.tensor([[0, 2, 0, 1], [1, 1, 2, 0]]).float() / 3
    assert torch.equal(decode_labels(enc), expected)
    assert abs(float(expected[0, 3]) - float(third)) < 1e-7


def test_quant_packing_pads_the_last_byte() -> None:
    x = torch.tensor([[0.0, 1 / 3, 2 / 3]])
    enc2 = label_codec("quant:bits=2").encode(x)
    assert enc2.tensors["packed"].tolist() == [0b00_01_10_00]
    enc4 = label_codec("quant:bits=4").encode(torch.tensor([[0.6, 0.0, 0.4]]))
    assert enc4.tensors["packed"].tolist() == [0x90, 0x60]  # 9, 0 | 6, pad
    assert torch.equal(decode_labels(enc4), torch.tensor([[9.0, 0.0, 6.0]]) / 15)
    enc8 = label_codec("quant:bits=8").encode(L24)
    assert enc8.tensors["packed"].tolist() == [32, 128, 32, 64, 64, 64, 128, 0]


def test_hard_hand_written_and_ties() -> None:
    enc = label_codec("hard").encode(L24)
    assert enc.tensors["indices"].dtype == torch.uint8 and enc.tensors["indices"].tolist() == [1, 2]
    assert torch.equal(decode_labels(enc), torch.tensor([[0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]]))
    tie = torch.tensor([[0.0, 0.4, 0.2, 0.4]])
    assert label_codec("hard").encode(tie).tensors["indices"].tolist() == [1]


def test_renorm_of_an_all_zero_row_is_uniform_over_the_stored_support() -> None:
    x = torch.tensor([[0.5, 0.3, 0.2, 0.0], [0.0, 0.0, 0.0, 0.0]])
    topk = decode_labels(label_codec("topk:k=2,renorm=1").encode(x))
    assert torch.equal(topk[1], torch.tensor([0.5, 0.5, 0.0, 0.0]))
    flat = torch.full((1, 40), 1 / 40)  # every entry rounds to level 0 at 2 bits
    quant = decode_labels(label_codec("quant:bits=2,renorm=1").encode(flat))
    assert torch.equal(quant, torch.full((1, 40), 1 / 40))


# -------------------------------------------------------------------------------------- byte formulas


@pytest.mark.parametrize(("spec", "n", "c", "nbytes"), [
    ("topk:k=3,values=fp16", 10, 10, 10 * 3 * 2 + 10 * 3 * 1),
    ("topk:k=3,values=fp32", 10, 10, 10 * 3 * 4 + 10 * 3 * 1),
    ("topk:k=3,values=int8", 10, 10, 10 * 3 * 1 + 10 * 3 * 1),
    ("topk:k=2,values=int8", 4, 300, 4 * 2 * 1 + 4 * 2 * 2),
    ("quant:bits=4", 10, 10, 50),
    ("quant:bits=4", 1, 3, 2),
    ("quant:bits=2", 1, 5, 2),
    ("quant:bits=2", 3, 3, 3),
    ("quant:bits=8", 7, 3, 21),
    ("hard", 10, 10, 10),
    ("hard", 10, 256, 10),
    ("hard", 10, 257, 20),
    ("hard", 10, 300, 20),
    ("fp32", 5, 10, 200),
    ("fp16", 5, 10, 100),
    ("bf16", 5, 10, 100),
])
def test_label_nbytes_formulas(spec: str, n: int, c: int, nbytes: int) -> None:
    enc = label_codec(spec).encode(stochastic(n, c))
    assert enc.nbytes == nbytes == payload_nbytes(enc)


def test_index_dtypes_follow_the_number_of_classes() -> None:
    for c, dtype in ((256, torch.uint8), (257, torch.int16), (300, torch.int16)):
        x = stochastic(2, c)
        assert label_codec("hard").encode(x).tensors["indices"].dtype == dtype
        assert label_codec("topk:k=2").encode(x).tensors["indices"].dtype == dtype
        assert torch.equal(decode_labels(label_codec(f"topk:k={c}").encode(x)), x)


def test_png_nbytes_counts_streams_and_lengths() -> None:
    images = torch.randint(0, 256, (3, 1, 8, 8), dtype=torch.uint8)
    enc = image_codec("png").encode(images)
    lengths = enc.tensors["lengths"]
    assert enc.nbytes == int(lengths.long().sum()) + 3 * lengths.element_size()
    assert enc.tensors["data"].numpy().tobytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_png_and_zlib_use_maximum_compression() -> None:
    images = torch.randint(0, 4, (2, 1, 16, 16), dtype=torch.uint8)
    png = image_codec("png").encode(images).tensors["data"].numpy().tobytes()
    idat = png.index(b"IDAT") + 4  # the zlib stream of the first image
    assert png[idat:idat + 2] == b"\x78\xda"  # zlib header FLEVEL 3: levels 7-9
    assert image_codec("zlib").encode(images).tensors["data"].numpy().tobytes()[:2] == b"\x78\xda"


# ------------------------------------------------------------------------------------ bytes on disk


ALL_LABEL_SPECS = ["fp32", "fp16", "bf16", "hard", "topk:k=3,values=fp16", "topk:k=3,values=int8,renorm=1",
                   "topk:k=12,values=fp32", "quant:bits=8", "quant:bits=4", "quant:bits=2,renorm=1"]


@pytest.mark.parametrize("spec", ALL_LABEL_SPECS)
def test_label_payload_bytes_match_the_file(tmp_path, spec: str) -> None:
    enc = label_codec(spec).encode(stochastic(7, 12, seed=4))
    path = save_tensors(tmp_path / "labels.safetensors", enc.tensors)
    data = path.read_bytes()
    hlen = header_length(data)
    assert len(data) == 8 + hlen + enc.nbytes
    header = json.loads(data[8:8 + hlen])
    assert max(v["data_offsets"][1] for k, v in header.items() if k != "__metadata__") == enc.nbytes
    loaded, _ = load_tensors(path)
    assert torch.equal(decode_labels(Encoded(enc.codec, loaded, enc.meta)), decode_labels(enc))


@pytest.mark.parametrize("spec", ["raw", "png", "zlib"])
def test_image_payload_bytes_match_the_file(tmp_path, spec: str) -> None:
    images = torch.randint(0, 256, (5, 3, 9, 9), dtype=torch.uint8)
    enc = image_codec(spec).encode(images)
    data = save_tensors(tmp_path / "images.safetensors", enc.tensors).read_bytes()
    assert len(data) == 8 + header_length(data) + enc.nbytes


def test_images_and_labels_share_one_file(tmp_path) -> None:
    images = torch.randint(0, 256, (6, 1, 28, 28), dtype=torch.uint8)
    labels = stochastic(6, 10, seed=5)
    img_enc = image_codec("zlib").encode(images)
    lab_enc = label_codec("topk:k=3,values=fp16,renorm=1").encode(labels)
    t1, m1 = encoded_to_safetensors_dict(img_enc, "images")
    t2, m2 = encoded_to_safetensors_dict(lab_enc, "labels")
    assert set(t1) == {"images.data"} and set(t2) == {"labels.indices", "labels.values"}
    assert all(isinstance(v, str) for v in {**m1, **m2}.values())
    path = save_tensors(tmp_path / "set.safetensors", {**t1, **t2}, metadata={**m1, **m2, "note": "x"})
    data = path.read_bytes()
    assert len(data) == 8 + header_length(data) + img_enc.nbytes + lab_enc.nbytes
    tensors, meta = load_tensors(path)
    img_back = encoded_from_safetensors_dict(tensors, meta, "images")
    lab_back = encoded_from_safetensors_dict(tensors, meta, "labels")
    assert img_back.codec == "zlib" and lab_back.codec == "topk:k=3,values=fp16,renorm=1"
    assert lab_back.meta == lab_enc.meta and img_back.nbytes == img_enc.nbytes
    assert torch.equal(decode_images(img_back), images)
    assert torch.equal(decode_labels(lab_back), decode_labels(lab_enc))
    with pytest.raises(CorruptFileError, match="images"):
        encoded_from_safetensors_dict(tensors, meta, "targets")


# ---------------------------------------------------------------------------------------- properties


@st.composite
def row_stochastic(draw) -> torch.Tensor:
    n, c = draw(st.integers(1, 20)), draw(st.integers(2, 40))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    kind = draw(st.sampled_from(["softmax", "onehot", "uniform", "sparse", "partial"]))
    if kind == "onehot":
        return torch.nn.functional.one_hot(torch.randint(0, c, (n,), generator=g), c).float()
    if kind == "uniform":
        return torch.full((n, c), 1.0 / c)
    x = (torch.randn(n, c, generator=g) * draw(st.floats(0.1, 12.0))).softmax(dim=1)
    if kind == "sparse":  # exact zeros and ties among the survivors
        x = torch.where(torch.rand(n, c, generator=g) < 0.6, 0.0, x.round(decimals=1))
        x[:, 0] += 1e-3
        x = x / x.sum(dim=1, keepdim=True)
    if kind == "partial":  # rows summing to less than one (un-renormalised transforms)
        x = x * torch.rand(n, 1, generator=g)
    return x


def row_sum_slack(spec: str, c: int) -> float:
    """How far a decoded row may sum above its input row, from the per-entry error bounds."""
    codec = label_codec(spec)
    if codec.name == "fp16":
        return 2.0**-11 + c * 2.0**-25
    if codec.name == "bf16":
        return 2.0**-8
    if codec.name == "quant":
        return c * 0.5 / codec.levels
    if codec.name == "topk":
        return {"fp32": 0.0, "fp16": 2.0**-11, "int8": codec.k * 0.5 / 255}[codec.values]
    return 0.0


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(row_stochastic())
def test_every_label_codec_decodes_to_sub_stochastic_rows(x: torch.Tensor) -> None:
    n, c = x.shape
    for spec in label_specs(c):
        codec = label_codec(spec)
        enc = codec.encode(x)
        dec = codec.decode(enc)
        assert dec.shape == (n, c) and dec.dtype == torch.float32, spec
        assert (dec >= 0).all(), spec
        sums = dec.double().sum(dim=1)
        if getattr(codec, "renorm", False):
            assert torch.allclose(sums, torch.ones(n, dtype=torch.float64), atol=1e-5), spec
        elif codec.name == "hard":
            assert torch.equal(sums, torch.ones(n, dtype=torch.float64))
        else:
            assert (sums <= x.double().sum(dim=1) + row_sum_slack(spec, c) + 1e-5).all(), spec
        assert enc.nbytes == payload_nbytes(enc)


@settings(max_examples=60, deadline=None)
@given(row_stochastic())
def test_topk_and_hard_keep_the_argmax(x: torch.Tensor) -> None:
    n, c = x.shape
    amax = x.argmax(dim=1)
    rows = torch.arange(n)
    for k in sorted({1, min(3, c), c}):
        for values in ("fp32", "fp16", "int8"):
            enc = label_codec(f"topk:k={k},values={values}").encode(x)
            assert torch.equal(enc.tensors["indices"][:, 0].long(), amax)
            dec = decode_labels(enc)
            assert torch.equal(dec[rows, amax], dec.max(dim=1).values)
            assert int((dec > 0).sum(dim=1).max()) <= k
    hard = decode_labels(label_codec("hard").encode(x))
    assert torch.equal(hard.argmax(dim=1), amax) and torch.equal(hard.sum(dim=1), torch.ones(n))


@settings(max_examples=60, deadline=None)
@given(row_stochastic())
def test_error_bounds_hold_on_random_labels(x: torch.Tensor) -> None:
    n, c = x.shape
    x64 = x.double()
    fp16 = decode_labels(label_codec("fp16").encode(x)).double()
    normal = x64 >= 2.0**-14
    assert ((fp16 - x64).abs()[normal] <= 2.0**-11 * x64[normal]).all()
    assert ((fp16 - x64).abs()[~normal] <= 2.0**-25).all()
    bf16 = decode_labels(label_codec("bf16").encode(x)).double()
    assert ((bf16 - x64).abs() <= 2.0**-8 * x64 + 2.0**-134).all()
    for bits in (8, 4, 2):
        dec = decode_labels(label_codec(f"quant:bits={bits}").encode(x)).double()
        assert float((dec - x64).abs().max()) <= 0.5 / (2**bits - 1) + 1e-7
        assert enc_bytes(f"quant:bits={bits}", x) == math.ceil(n * c * bits / 8)
    k = min(3, c)
    kept = torch.zeros(n, c, dtype=torch.bool).scatter_(
        1, torch.sort(x, dim=1, descending=True, stable=True).indices[:, :k], True)
    exact = decode_labels(label_codec(f"topk:k={k}").encode(x))
    assert torch.equal(exact[kept], x[kept]) and (exact[~kept] == 0).all()
    int8 = decode_labels(label_codec(f"topk:k={k},values=int8").encode(x)).double()
    assert float((int8 - x64).abs()[kept].max()) <= 0.5 / 255 + 1e-7 and (int8[~kept] == 0).all()
    assert enc_bytes(f"topk:k={k},values=fp16", x) == n * k * 3


def enc_bytes(spec: str, x: torch.Tensor) -> int:
    return label_codec(spec).encode(x).nbytes


# ----------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(("labels", "exc", "match"), [
    (torch.tensor([[0.5, float("nan")]]), ValueError, "NaN"),
    (torch.tensor([[0.5, -0.1]]), ValueError, "negative"),
    (torch.tensor([0.5, 0.5]), ValueError, "2-D"),
    (torch.tensor([[1, 0]]), TypeError, "floating"),
    (torch.tensor([[0.9, 0.9]]), ValueError, "sums to"),
    ([[0.5, 0.5]], TypeError, "torch.Tensor"),
    (torch.zeros(0, 3), ValueError, "empty"),
])
@pytest.mark.parametrize("spec", ["fp32", "topk:k=1", "quant:bits=4", "hard"])
def test_bad_labels_are_rejected(labels: object, exc: type[Exception], match: str, spec: str) -> None:
    with pytest.raises(exc, match=match):
        label_codec(spec).encode(labels)  # type: ignore[arg-type]


@pytest.mark.parametrize(("spec", "match"), [
    ("fp61", "Did you mean 'fp16'"),
    ("topq:k=2", "Did you mean 'topk'"),
    ("topk:k=0", ">= 1"),
    ("topk:k=two", "integer"),
    ("topk", "needs parameter"),
    ("topk:kk=2", "Did you mean 'k'.*Valid parameters: k, values, renorm"),
    ("topk:k=2,values=int4", "values must be one of"),
    ("topk:k=2,renorm=yes", "renorm must be 0 or 1"),
    ("quant:bits=3", "bits must be one of 8, 4, 2"),
    ("quant:bits=4,bits=4", "twice"),
    ("fp16:k=2", "takes no parameters"),
    ("topk:", "no parameters"),
    ("topk:k", "key=value"),
    ("", "empty"),
    (":k=2", "empty"),
])
def test_bad_label_specs(spec: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        label_codec(spec)


def test_unknown_codec_lists_valid_names() -> None:
    with pytest.raises(UnknownNameError) as info:
        label_codec("fp61")
    assert "bf16, fp16, fp32, hard, projector, quant, topk" in str(info.value)
    with pytest.raises(ValueError, match="Did you mean 'zlib'.*png, raw, webp, zlib"):
        image_codec("zlip")
    with pytest.raises(TypeError, match="string"):
        label_codec(16)  # type: ignore[arg-type]


def test_k_larger_than_the_number_of_classes() -> None:
    with pytest.raises(ValueError, match="k=5 exceeds the number of classes C=4"):
        label_codec("topk:k=5").encode(L24)


@pytest.mark.parametrize(("images", "exc", "match"), [
    (torch.rand(2, 1, 4, 4), TypeError, "uint8"),
    (torch.zeros(2, 1, 4, 4, dtype=torch.int32), TypeError, "uint8"),
    (torch.zeros(1, 4, 4, dtype=torch.uint8), ValueError, r"\(N, C, H, W\)"),
    (torch.zeros(2, 2, 4, 4, dtype=torch.uint8), ValueError, "channels"),
    (torch.zeros(0, 1, 4, 4, dtype=torch.uint8), ValueError, "empty"),
])
@pytest.mark.parametrize("spec", ["raw", "png", "zlib"])
def test_bad_images_are_rejected(images: torch.Tensor, exc: type[Exception], match: str, spec: str) -> None:
    with pytest.raises(exc, match=match):
        image_codec(spec).encode(images)


# ------------------------------------------------------------------------------------ corrupt payloads


def test_decoding_with_another_codec_is_refused() -> None:
    enc = label_codec("topk:k=2").encode(L24)
    with pytest.raises(ValueError, match="encoded with 'topk:k=2,values=fp32,renorm=0'"):
        label_codec("topk:k=2,renorm=1").decode(enc)
    with pytest.raises(ValueError, match="encoded with"):
        image_codec("raw").decode(image_codec("zlib").encode(torch.zeros(1, 1, 2, 2, dtype=torch.uint8)))


def test_corrupt_payloads_raise_corrupt_file_error() -> None:
    enc = label_codec("topk:k=2").encode(L24)
    cases = [
        Encoded(enc.codec, {"indices": enc.tensors["indices"]}, enc.meta),  # a tensor missing
        Encoded(enc.codec, {**enc.tensors, "values": enc.tensors["values"].half()}, enc.meta),  # wrong dtype
        Encoded(enc.codec, {**enc.tensors, "indices": torch.tensor([[1, 4], [2, 0]], dtype=torch.uint8)},
                enc.meta),  # index out of range
        Encoded(enc.codec, {**enc.tensors, "indices": torch.tensor([[1, 1], [2, 0]], dtype=torch.uint8)},
                enc.meta),  # a repeated index
        Encoded(enc.codec, enc.tensors, {"shape": "2,x"}),
        Encoded(enc.codec, enc.tensors, {}),
    ]
    for bad in cases:
        with pytest.raises(CorruptFileError):
            decode_labels(bad)
    hard = label_codec("hard").encode(L24)
    with pytest.raises(CorruptFileError, match="outside"):
        decode_labels(Encoded("hard", {"indices": torch.tensor([1, 7], dtype=torch.uint8)}, hard.meta))
    quant = label_codec("quant:bits=4").encode(L24)
    with pytest.raises(CorruptFileError):
        decode_labels(Encoded(quant.codec, {"packed": quant.tensors["packed"][:-1].clone()}, quant.meta))


def test_corrupt_image_payloads_raise_corrupt_file_error() -> None:
    images = torch.randint(0, 256, (2, 1, 5, 5), dtype=torch.uint8)
    z = image_codec("zlib").encode(images)
    garbage = torch.arange(20, dtype=torch.uint8)
    with pytest.raises(CorruptFileError, match="decompress"):
        decode_images(Encoded("zlib", {"data": garbage}, z.meta))
    with pytest.raises(CorruptFileError, match="to 50 bytes, expected 40"):
        decode_images(Encoded("zlib", z.tensors, {"shape": "2,1,5,4"}))
    p = image_codec("png").encode(images)
    broken = p.tensors["data"].clone()
    broken[40:60] = 0
    with pytest.raises(CorruptFileError, match="PNG"):
        decode_images(Encoded("png", {**p.tensors, "data": broken}, p.meta))
    with pytest.raises(CorruptFileError, match="lengths"):
        decode_images(Encoded("png", {**p.tensors, "data": p.tensors["data"][:-1].clone()}, p.meta))
    with pytest.raises(CorruptFileError):
        decode_images(Encoded("png", p.tensors, {"shape": "2,3,5,5"}))  # RGB expected, L stored


def test_encoded_validates_its_fields() -> None:
    with pytest.raises(ValueError, match="contiguous"):
        Encoded("raw", {"pixels": torch.zeros(4, 4).t()}, {})
    with pytest.raises(ValueError, match="no dots"):
        Encoded("raw", {"a.b": torch.zeros(2)}, {})
    with pytest.raises(TypeError, match="str -> str"):
        Encoded("raw", {"pixels": torch.zeros(2)}, {"shape": 2})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="prefix"):
        encoded_to_safetensors_dict(label_codec("hard").encode(L24), "a.b")

"""Real-format dataset loaders: each test writes small files in the genuine on-disk format and loads them."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import softlabels.data.fashion_mnist as fm
from softlabels.data import list_datasets, load_dataset
from softlabels.registry import UnknownNameError
from softlabels.validation import CorruptFileError, DataNotFoundError

FASHION_SYSTEM = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(autouse=True)
def _isolated_search(tmp_path_factory, monkeypatch):
    """No test may find data in the real $SOFTLABELS_DATA, /usr/share/datasets or ~/.cache."""
    empty = tmp_path_factory.mktemp("nowhere")
    monkeypatch.delenv("SOFTLABELS_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(empty / "cache"))
    monkeypatch.setattr(fm, "SYSTEM_DATA_DIR", empty / "system")


# ------------------------------------------------------------------------------------------------ IDX
def idx_bytes(arr: np.ndarray) -> bytes:
    magic = 0x800 | arr.ndim
    header = struct.pack(">I", magic) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return header + arr.astype(np.uint8).tobytes()


def write_idx_set(folder: Path, *, gz: bool = True, n_train: int = 20, n_test: int = 10,
                  seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    folder.mkdir(parents=True, exist_ok=True)
    for name, arr in arrays.items():
        data = idx_bytes(arr)
        if gz:
            (folder / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (folder / name).write_bytes(data)
    return arrays


@pytest.mark.parametrize("gz", [True, False], ids=["gz", "raw"])
def test_fashion_mnist_idx_roundtrip(tmp_path, gz):
    arrays = write_idx_set(tmp_path, gz=gz)
    ds = load_dataset("fashion-mnist", root=tmp_path)
    assert ds.train_images.shape == (20, 1, 28, 28) and ds.test_images.shape == (10, 1, 28, 28)
    assert ds.train_images.dtype == torch.uint8 and ds.train_targets.dtype == torch.int64
    assert np.array_equal(ds.train_images[:, 0].numpy(), arrays["train-images-idx3-ubyte"])
    assert np.array_equal(ds.test_images[:, 0].numpy(), arrays["t10k-images-idx3-ubyte"])
    assert np.array_equal(ds.train_targets.numpy(), arrays["train-labels-idx1-ubyte"])
    assert np.array_equal(ds.test_targets.numpy(), arrays["t10k-labels-idx1-ubyte"])
    assert ds.classes[0] == "T-shirt/top" and ds.classes[-1] == "Ankle boot" and ds.num_classes == 10
    assert ds.mean == (0.2860,) and ds.std == (0.3530,)
    assert ds.source == str(tmp_path)


def test_mnist_torchvision_layout_and_constants(tmp_path):
    arrays = write_idx_set(tmp_path / "MNIST" / "raw", gz=False)
    ds = load_dataset("mnist", root=tmp_path)
    assert ds.mean == (0.1307,) and ds.std == (0.3081,) and ds.classes == tuple("0123456789")
    assert np.array_equal(ds.train_images[:, 0].numpy(), arrays["train-images-idx3-ubyte"])


def test_search_order_env_then_cache(tmp_path, monkeypatch):
    cache = Path(os.environ["XDG_CACHE_HOME"]) / "softlabels" / "fashion-mnist"
    write_idx_set(cache, n_train=7)
    assert load_dataset("fashion-mnist").train_images.shape[0] == 7  # found in the user cache
    write_idx_set(tmp_path / "data" / "fashion-mnist", n_train=9)
    monkeypatch.setenv("SOFTLABELS_DATA", str(tmp_path / "data"))
    assert load_dataset("fashion-mnist").train_images.shape[0] == 9  # $SOFTLABELS_DATA/<name> comes first
    write_idx_set(fm.SYSTEM_DATA_DIR / "fashion-mnist", n_train=11)
    monkeypatch.delenv("SOFTLABELS_DATA")
    assert load_dataset("fashion-mnist").train_images.shape[0] == 11  # system copy before the cache


def test_explicit_root_does_not_fall_back(tmp_path):
    write_idx_set(Path(os.environ["XDG_CACHE_HOME"]) / "softlabels" / "fashion-mnist")
    with pytest.raises(DataNotFoundError) as e:
        load_dataset("fashion-mnist", root=tmp_path / "mine")
    assert str(tmp_path / "mine") in str(e.value)


def test_missing_lists_searched_folders_and_how_to_get(tmp_path, monkeypatch):
    monkeypatch.setenv("SOFTLABELS_DATA", str(tmp_path / "data"))
    with pytest.raises(DataNotFoundError) as e:
        load_dataset("fashion-mnist")
    msg = str(e.value)
    cache = Path(os.environ["XDG_CACHE_HOME"]) / "softlabels" / "fashion-mnist"
    system = fm.SYSTEM_DATA_DIR / "fashion-mnist"
    for folder in (tmp_path / "data" / "fashion-mnist", tmp_path / "data", system, cache):
        assert str(folder) in msg
    assert "apt-get install dataset-fashion-mnist" in msg and "download=True" in msg
    assert "--download" not in msg  # no such flag exists: the message must not suggest one
    assert "SOFTLABELS_DATA" in msg


def test_partial_folder_is_reported(tmp_path):
    write_idx_set(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataNotFoundError, match="t10k-labels-idx1-ubyte"):
        load_dataset("fashion-mnist", root=tmp_path)


@pytest.mark.parametrize("gz", [True, False], ids=["gz", "raw"])
def test_truncated_idx_is_corrupt(tmp_path, gz):
    arrays = write_idx_set(tmp_path, gz=False)
    data = idx_bytes(arrays["train-images-idx3-ubyte"])[:-100]
    (tmp_path / "train-images-idx3-ubyte").unlink()
    target = tmp_path / ("train-images-idx3-ubyte.gz" if gz else "train-images-idx3-ubyte")
    target.write_bytes(gzip.compress(data) if gz else data)
    with pytest.raises(CorruptFileError) as e:
        load_dataset("fashion-mnist", root=tmp_path)
    assert str(target) in str(e.value) and "truncated" in str(e.value)


def test_truncated_gzip_stream_is_corrupt(tmp_path):
    write_idx_set(tmp_path)
    p = tmp_path / "t10k-images-idx3-ubyte.gz"
    p.write_bytes(p.read_bytes()[:-30])
    with pytest.raises(CorruptFileError, match="t10k-images-idx3-ubyte.gz"):
        load_dataset("fashion-mnist", root=tmp_path)


def test_wrong_magic_is_corrupt(tmp_path):
    arrays = write_idx_set(tmp_path, gz=False)
    # a label file where the image file should be: magic 0x801 instead of 0x803
    (tmp_path / "train-images-idx3-ubyte").write_bytes(idx_bytes(arrays["train-labels-idx1-ubyte"]))
    with pytest.raises(CorruptFileError) as e:
        load_dataset("fashion-mnist", root=tmp_path)
    msg = str(e.value)
    assert "magic" in msg and "0x00000801" in msg and "train-images-idx3-ubyte" in msg


def test_idx_count_mismatch_and_bad_labels(tmp_path):
    arrays = write_idx_set(tmp_path, gz=False)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(idx_bytes(arrays["train-labels-idx1-ubyte"][:5]))
    with pytest.raises(CorruptFileError, match="do not belong together"):
        load_dataset("fashion-mnist", root=tmp_path)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(idx_bytes(np.full(20, 12, np.uint8)))
    with pytest.raises(CorruptFileError, match="label 12"):
        load_dataset("fashion-mnist", root=tmp_path)


class _FakeResponse(io.BytesIO):
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_download_verifies_sha256_and_writes_cache(tmp_path, monkeypatch):
    """The download path with urlopen replaced (no network): bad hash saves nothing, good hash loads."""
    import urllib.request

    served = tmp_path / "served"
    arrays = write_idx_set(served)
    digests = {k: hashlib.sha256(idx_bytes(v)).hexdigest() for k, v in arrays.items()}
    urls: list[str] = []

    def fake_urlopen(url, timeout=None):
        urls.append(url)
        return _FakeResponse((served / url.rsplit("/", 1)[1]).read_bytes())

    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
    cache = Path(os.environ["XDG_CACHE_HOME"]) / "softlabels" / "fashion-mnist"
    with pytest.raises(CorruptFileError, match="sha256"):
        load_dataset("fashion-mnist", download=True)  # real constants do not match our fake files
    assert not list(cache.glob("*.gz"))
    monkeypatch.setattr(fm, "FASHION_MNIST_SHA256", digests)
    ds = load_dataset("fashion-mnist", download=True)
    assert urls[-1].startswith(fm.FASHION_MNIST_URL)
    assert sorted(p.name for p in cache.iterdir()) == sorted(f"{k}.gz" for k in arrays)
    assert np.array_equal(ds.test_targets.numpy(), arrays["t10k-labels-idx1-ubyte"])


def test_sha256_constants_match_system_copy():
    if not FASHION_SYSTEM.is_dir():
        pytest.skip("dataset-fashion-mnist is not installed")
    for part, digest in fm.FASHION_MNIST_SHA256.items():
        raw = gzip.decompress((FASHION_SYSTEM / f"{part}.gz").read_bytes())
        assert hashlib.sha256(raw).hexdigest() == digest


def test_real_fashion_mnist(monkeypatch):
    if not FASHION_SYSTEM.is_dir():
        pytest.skip("dataset-fashion-mnist is not installed")
    monkeypatch.setattr(fm, "SYSTEM_DATA_DIR", FASHION_SYSTEM.parent)
    ds = load_dataset("fashion-mnist")
    assert ds.train_images.shape == (60000, 1, 28, 28) and ds.test_images.shape == (10000, 1, 28, 28)
    assert ds.image_shape == (1, 28, 28) and ds.num_classes == 10
    assert ds.train_targets.bincount().tolist() == [6000] * 10
    assert ds.test_targets.bincount().tolist() == [1000] * 10


# ---------------------------------------------------------------------------------------------- CIFAR
def _cifar_arrays(n: int, k: int, seed: int) -> tuple[np.ndarray, list[int]]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 3072), dtype=np.uint8), rng.integers(0, k, n).tolist()


def _dumps(obj, protocol: int = 2) -> bytes:
    """Like the originals: protocol 2, and arrays referenced by the numpy 1.x module path."""
    data = pickle.dumps(obj, protocol=protocol)
    return data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray") if protocol == 2 else data


def write_cifar10_py(folder: Path, *, protocol: int = 2):
    folder.mkdir(parents=True)
    xs, ys = [], []
    for i in range(1, 6):
        x, y = _cifar_arrays(3, 10, i)
        batch = {b"batch_label": f"training batch {i} of 5".encode(), b"labels": y, b"data": x,
                 b"filenames": [f"img_{i}_{j}.png".encode() for j in range(3)]}
        (folder / f"data_batch_{i}").write_bytes(_dumps(batch, protocol))
        xs.append(x)
        ys += y
    xt, yt = _cifar_arrays(4, 10, 99)
    test = {b"batch_label": b"testing batch 1 of 1", b"labels": yt, b"data": xt, b"filenames": [b"t.png"] * 4}
    (folder / "test_batch").write_bytes(_dumps(test, protocol))
    meta = {b"num_cases_per_batch": 3, b"label_names": [f"c{j}".encode() for j in range(10)],
            b"num_vis": 3072}
    (folder / "batches.meta").write_bytes(_dumps(meta, protocol))
    return np.concatenate(xs), ys, xt, yt


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_cifar10_pickle_folder_or_parent(tmp_path, protocol):
    xtr, ytr, xte, yte = write_cifar10_py(tmp_path / "cifar-10-batches-py", protocol=protocol)
    for root in (tmp_path, tmp_path / "cifar-10-batches-py"):
        ds = load_dataset("cifar10", root=root)
        assert ds.train_images.shape == (15, 3, 32, 32) and ds.test_images.shape == (4, 3, 32, 32)
        assert np.array_equal(ds.train_images.numpy(), xtr.reshape(-1, 3, 32, 32))
        assert np.array_equal(ds.test_images.numpy(), xte.reshape(-1, 3, 32, 32))
        assert ds.train_targets.tolist() == ytr and ds.test_targets.tolist() == yte
        assert ds.train_targets.dtype == torch.int64
        assert ds.classes == tuple(f"c{j}" for j in range(10))
        assert ds.mean == (0.4914, 0.4822, 0.4465) and ds.std == (0.2023, 0.1994, 0.2010)


def test_cifar_pixel_layout_is_channel_planes(tmp_path):
    """Each CIFAR row is 1024 red, then 1024 green, then 1024 blue bytes, row-major."""
    xtr, _, _, _ = write_cifar10_py(tmp_path / "cifar-10-batches-py")
    ds = load_dataset("cifar10", root=tmp_path)
    assert int(ds.train_images[0, 1, 0, 0]) == int(xtr[0, 1024])
    assert int(ds.train_images[0, 2, 1, 3]) == int(xtr[0, 2048 + 32 + 3])


def test_cifar10_str_keys_accepted(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar10_py(folder)
    x, y = _cifar_arrays(3, 10, 1)
    (folder / "data_batch_1").write_bytes(pickle.dumps({"data": x, "labels": y}))
    ds = load_dataset("cifar10", root=folder)
    assert np.array_equal(ds.train_images[:3].numpy(), x.reshape(-1, 3, 32, 32))


def test_cifar10_binary(tmp_path):
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    xs, ys = [], []
    for i, name in enumerate([f"data_batch_{j}.bin" for j in range(1, 6)] + ["test_batch.bin"]):
        x, y = _cifar_arrays(2, 10, i)
        recs = np.concatenate([np.asarray(y, np.uint8)[:, None], x], axis=1)
        (folder / name).write_bytes(recs.tobytes())
        xs.append(x)
        ys.append(y)
    (folder / "batches.meta.txt").write_text("\n".join(f"n{j}" for j in range(10)) + "\n\n")
    ds = load_dataset("cifar10", root=tmp_path)
    assert ds.train_images.shape == (10, 3, 32, 32) and ds.test_images.shape == (2, 3, 32, 32)
    assert np.array_equal(ds.train_images.numpy(), np.concatenate(xs[:5]).reshape(-1, 3, 32, 32))
    assert ds.train_targets.tolist() == sum(ys[:5], []) and ds.test_targets.tolist() == ys[5]
    assert ds.classes[3] == "n3"
    (folder / "test_batch.bin").write_bytes((folder / "test_batch.bin").read_bytes()[:-7])
    with pytest.raises(CorruptFileError, match="test_batch.bin"):
        load_dataset("cifar10", root=tmp_path)


def write_cifar100_py(folder: Path):
    folder.mkdir(parents=True)
    out = {}
    for split, n, seed in (("train", 6, 1), ("test", 3, 2)):
        x, fine = _cifar_arrays(n, 100, seed)
        coarse = [f // 5 for f in fine]
        d = {b"filenames": [b"f.png"] * n, b"batch_label": split.encode(), b"fine_labels": fine,
             b"coarse_labels": coarse, b"data": x}
        (folder / split).write_bytes(_dumps(d))
        out[split] = (x, fine, coarse)
    meta = {b"fine_label_names": [f"fine{j}".encode() for j in range(100)],
            b"coarse_label_names": [f"coarse{j}".encode() for j in range(20)]}
    (folder / "meta").write_bytes(_dumps(meta))
    return out


def test_cifar100_pickle_fine_and_coarse(tmp_path):
    out = write_cifar100_py(tmp_path / "cifar-100-python")
    fine = load_dataset("cifar100", root=tmp_path)
    assert fine.num_classes == 100 and fine.classes[7] == "fine7"
    assert fine.train_targets.tolist() == out["train"][1] and fine.test_targets.tolist() == out["test"][1]
    assert np.array_equal(fine.train_images.numpy(), out["train"][0].reshape(-1, 3, 32, 32))
    coarse = load_dataset("cifar100", root=tmp_path / "cifar-100-python", label_mode="coarse")
    assert coarse.num_classes == 20 and coarse.classes[2] == "coarse2"
    assert coarse.train_targets.tolist() == out["train"][2]
    with pytest.raises(ValueError, match="coarse"):
        load_dataset("cifar100", root=tmp_path, label_mode="coarce")


def test_cifar100_binary(tmp_path):
    folder = tmp_path / "cifar-100-binary"
    folder.mkdir()
    data = {}
    for split, seed in (("train", 1), ("test", 2)):
        x, fine = _cifar_arrays(4, 100, seed)
        coarse = [f // 5 for f in fine]
        labels = np.stack([np.asarray(coarse, np.uint8), np.asarray(fine, np.uint8)], axis=1)
        recs = np.concatenate([labels, x], axis=1)
        (folder / f"{split}.bin").write_bytes(recs.tobytes())
        data[split] = (x, fine, coarse)
    ds = load_dataset("cifar100", root=tmp_path)
    assert ds.test_targets.tolist() == data["test"][1] and ds.classes[0] == "apple" and len(ds.classes) == 100
    assert np.array_equal(ds.test_images.numpy(), data["test"][0].reshape(-1, 3, 32, 32))
    coarse = load_dataset("cifar100", root=tmp_path, label_mode="coarse")
    assert coarse.train_targets.tolist() == data["train"][2] and coarse.classes[-1] == "vehicles_2"


class _Evil:
    def __init__(self, call, arg):
        self.call, self.arg = call, arg

    def __reduce__(self):
        return self.call, (self.arg,)


@pytest.mark.parametrize("call", ["system", "eval"])
def test_malicious_cifar_pickle_is_refused(tmp_path, call):
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar10_py(folder)
    marker = tmp_path / "pwned"
    payload = (_Evil(os.system, f"touch {marker}") if call == "system"
               else _Evil(eval, f"open({str(marker)!r}, 'w').close()"))
    (folder / "data_batch_2").write_bytes(pickle.dumps({b"data": payload, b"labels": [0]}, protocol=2))
    with pytest.raises(CorruptFileError, match="refusing to unpickle"):
        load_dataset("cifar10", root=folder)
    assert not marker.exists()


def test_cifar_bad_shape_and_truncated_pickle(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar10_py(folder)
    bad = folder / "data_batch_3"
    bad.write_bytes(pickle.dumps({b"data": np.zeros((3, 100), np.uint8), b"labels": [0] * 3}))
    with pytest.raises(CorruptFileError, match=r"data_batch_3.*3072 uint8"):
        load_dataset("cifar10", root=folder)
    bad.write_bytes(pickle.dumps({b"data": np.zeros((3, 3072), np.float32), b"labels": [0]}))
    with pytest.raises(CorruptFileError, match="uint8"):
        load_dataset("cifar10", root=folder)
    x, y = _cifar_arrays(3, 10, 1)
    bad.write_bytes(pickle.dumps({b"data": x, b"labels": y})[:-500])
    with pytest.raises(CorruptFileError, match="truncated"):
        load_dataset("cifar10", root=folder)


def test_cifar_missing(tmp_path):
    with pytest.raises(DataNotFoundError) as e:
        load_dataset("cifar10", root=tmp_path)
    msg = str(e.value)
    assert str(tmp_path / "cifar-10-batches-py") in msg and "cifar.html" in msg
    write_cifar10_py(tmp_path / "cifar-10-batches-py")
    (tmp_path / "cifar-10-batches-py" / "data_batch_4").unlink()
    with pytest.raises(DataNotFoundError, match="data_batch_4"):
        load_dataset("cifar10", root=tmp_path)


# -------------------------------------------------------------------------------------------- folders
def _png(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def make_tree(root: Path, classes: dict[str, int], *, size=(6, 6), val_name="val", seed=0):
    rng = np.random.default_rng(seed)
    pix: dict[str, dict[str, list[np.ndarray]]] = {"train": {}, val_name: {}}
    for split, per in (("train", 1), (val_name, 0)):
        for c, n in classes.items():
            pix[split][c] = []
            for i in range(n + per):
                a = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
                _png(root / split / c / f"img{i:02d}.png", a)
                pix[split][c].append(a)
    return pix


def test_imagefolder_png_roundtrip_and_class_order(tmp_path):
    pix = make_tree(tmp_path, {"zebra": 2, "apple": 3, "mango": 1})
    (tmp_path / "train" / "apple" / "notes.txt").write_text("not an image")
    ds = load_dataset("imagefolder", root=tmp_path)
    assert ds.classes == ("apple", "mango", "zebra")
    assert ds.train_images.shape == (4 + 2 + 3, 3, 6, 6) and ds.train_images.dtype == torch.uint8
    assert ds.train_targets.tolist() == [0] * 4 + [1] * 2 + [2] * 3
    expected = np.stack(pix["train"]["apple"] + pix["train"]["mango"] + pix["train"]["zebra"])
    assert np.array_equal(ds.train_images.permute(0, 2, 3, 1).numpy(), expected)
    assert ds.test_targets.tolist() == [0] * 3 + [1] + [2] * 2
    assert ds.mean == (0.485, 0.456, 0.406) and ds.std == (0.229, 0.224, 0.225)


def test_imagefolder_test_dir_grayscale_and_max_per_class(tmp_path):
    pix = make_tree(tmp_path, {"a": 3, "b": 2}, val_name="test")
    ds = load_dataset("imagefolder", root=tmp_path, grayscale=True, max_per_class=2)
    assert ds.train_images.shape == (4, 1, 6, 6) and ds.test_images.shape == (4, 1, 6, 6)
    assert ds.train_targets.tolist() == [0, 0, 1, 1] and len(ds.mean) == 1
    gray = np.asarray(Image.fromarray(pix["train"]["b"][1]).convert("L"))
    assert np.array_equal(ds.train_images[3, 0].numpy(), gray)


def test_imagefolder_sizes_and_resolution(tmp_path):
    make_tree(tmp_path, {"a": 1, "b": 1})
    wide = np.arange(4 * 8 * 3, dtype=np.uint8).reshape(4, 8, 3)  # h=4, w=8
    _png(tmp_path / "train" / "b" / "wide.png", wide)
    with pytest.raises(ValueError, match="resolution="):
        load_dataset("imagefolder", root=tmp_path)
    ds = load_dataset("imagefolder", root=tmp_path, resolution=4)
    assert ds.train_images.shape == (5, 3, 4, 4) and ds.test_images.shape == (2, 3, 4, 4)
    # shorter side already 4: the centre crop is exact, columns 2..5
    got = ds.train_images[ds.train_targets == 1][-1].permute(1, 2, 0).numpy()
    assert np.array_equal(got, wide[:, 2:6])
    with pytest.raises(ValueError, match="resolution"):
        load_dataset("imagefolder", root=tmp_path, resolution=0)


def test_imagefolder_jpeg_upscale(tmp_path):
    for split in ("train", "val"):
        for c in ("x", "y"):
            p = tmp_path / split / c / "im.JPEG"
            p.parent.mkdir(parents=True)
            Image.new("RGB", (20, 10), (200, 30, 90)).save(p, quality=95)
    ds = load_dataset("imagefolder", root=tmp_path, resolution=16)
    assert ds.train_images.shape == (2, 3, 16, 16)
    assert (ds.train_images[:, 0].float().mean() - 200).abs() < 4
    assert (ds.train_images[:, 1].float().mean() - 30).abs() < 4


def test_imagefolder_corrupt_image_named(tmp_path):
    make_tree(tmp_path, {"a": 1, "b": 1})
    bad = tmp_path / "train" / "b" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    with pytest.raises(CorruptFileError, match="broken.jpg"):
        load_dataset("imagefolder", root=tmp_path)


def test_imagefolder_missing_and_empty(tmp_path):
    with pytest.raises(DataNotFoundError, match="train"):
        load_dataset("imagefolder", root=tmp_path / "nope")
    with pytest.raises(DataNotFoundError, match="root="):
        load_dataset("imagefolder")
    (tmp_path / "train" / "a").mkdir(parents=True)
    with pytest.raises(DataNotFoundError, match="val"):
        load_dataset("imagefolder", root=tmp_path)
    (tmp_path / "val" / "a").mkdir(parents=True)
    with pytest.raises(DataNotFoundError, match="no images"):
        load_dataset("imagefolder", root=tmp_path)
    _png(tmp_path / "train" / "a" / "x.png", np.zeros((4, 4, 3), np.uint8))
    (tmp_path / "val" / "stranger").mkdir()
    with pytest.raises(ValueError, match="stranger"):
        load_dataset("imagefolder", root=tmp_path)


def make_tiny(base: Path, *, flat_val: bool = True) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(3)
    wnids = ["n02", "n01", "n03"]
    pix = {}
    for w in wnids:
        for i in range(2):
            a = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
            _png(base / "train" / w / "images" / f"{w}_{i}.png", a)
            pix[f"{w}_{i}"] = a
        (base / "train" / w / f"{w}_boxes.txt").write_text("x\t0\t0\t8\t8\n")
    val = [("val_0.png", "n03"), ("val_1.png", "n01"), ("val_2.png", "n03"), ("val_3.png", "n02")]
    for fname, w in val:
        a = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        _png(base / "val" / ("images" if flat_val else w) / fname, a)
        pix[fname] = a
    if flat_val:
        (base / "val" / "val_annotations.txt").write_text("".join(f"{f}\t{w}\t0\t0\t8\t8\n" for f, w in val))
    (base / "words.txt").write_text("n01\tgoldfish, Carassius auratus\nn02\tcrane\nn03\tcrane\nn99\tother\n")
    (base / "wnids.txt").write_text("\n".join(wnids) + "\n")
    return pix


def test_tiny_imagenet_flat_val_and_words(tmp_path):
    pix = make_tiny(tmp_path / "tiny-imagenet-200")
    ds = load_dataset("tiny-imagenet", root=tmp_path, resolution=None)
    assert ds.classes == ("goldfish", "crane (n02)", "crane (n03)")
    assert ds.train_images.shape == (6, 3, 8, 8) and ds.train_targets.tolist() == [0, 0, 1, 1, 2, 2]
    assert ds.test_targets.tolist() == [0, 1, 2, 2]  # grouped by class, files sorted within a class
    assert np.array_equal(ds.test_images[2].permute(1, 2, 0).numpy(), pix["val_0.png"])
    assert np.array_equal(ds.train_images[2].permute(1, 2, 0).numpy(), pix["n02_0"])
    default = load_dataset("tiny-imagenet", root=tmp_path / "tiny-imagenet-200", max_per_class=1)
    assert default.image_shape == (3, 64, 64) and default.train_targets.tolist() == [0, 1, 2]


def test_tiny_imagenet_reorganised_val_and_bad_annotation(tmp_path):
    make_tiny(tmp_path, flat_val=False)
    ds = load_dataset("tiny-imagenet", root=tmp_path, resolution=None)
    assert ds.test_targets.tolist() == [0, 1, 2, 2]
    other = tmp_path / "other"
    make_tiny(other)
    with open(other / "val" / "val_annotations.txt", "a") as f:
        f.write("val_9.png\tn77\t0\t0\t8\t8\n")
    with pytest.raises(CorruptFileError, match="n77"):
        load_dataset("tiny-imagenet", root=other)


def test_tiny_imagenet_missing(tmp_path):
    with pytest.raises(DataNotFoundError) as e:
        load_dataset("tiny-imagenet", root=tmp_path)
    assert str(tmp_path / "tiny-imagenet-200") in str(e.value) and "val_annotations.txt" in str(e.value)


# --------------------------------------------------------------------------------------------- digits
def test_digits():
    pytest.importorskip("sklearn")
    from sklearn.datasets import load_digits as sk

    ds = load_dataset("digits")
    assert ds.train_images.shape == (1347, 1, 8, 8) and ds.test_images.shape == (450, 1, 8, 8)
    assert ds.train_images.dtype == torch.uint8 and int(ds.train_images.max()) == 255
    assert ds.classes == tuple("0123456789") and ds.test_targets.bincount().min() >= 44
    all_imgs = torch.cat([ds.train_images, ds.test_images]).flatten(1).sort(dim=0).values
    ref = torch.as_tensor(np.round(sk().images * 255 / 16)).to(torch.uint8).flatten(1).sort(dim=0).values
    assert torch.equal(all_imgs, ref)
    big = load_dataset("digits", resolution=16)  # same fixed split, upsampled
    assert big.image_shape == (1, 16, 16) and torch.equal(big.train_targets, ds.train_targets)


def test_digits_without_sklearn(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(ImportError) as e:
        load_dataset("digits")
    assert "pip install 'softlabels[digits]'" in str(e.value)


# --------------------------------------------------------------------------------------------- arrays
def _split_arrays(images_tr, images_te):
    return {"train_images": images_tr, "train_targets": np.array([0, 1, 2, 1], np.int64)[: len(images_tr)],
            "test_images": images_te, "test_targets": np.array([2, 0], np.int32)[: len(images_te)]}


def test_arrays_npz_layouts(tmp_path):
    rng = np.random.default_rng(0)
    nhw = rng.integers(0, 256, (4, 5, 6), dtype=np.uint8)
    np.savez(tmp_path / "gray.npz", **_split_arrays(nhw, nhw[:2]))
    ds = load_dataset("arrays", root=tmp_path / "gray.npz")
    assert ds.train_images.shape == (4, 1, 5, 6) and np.array_equal(ds.train_images[:, 0].numpy(), nhw)
    assert ds.classes == ("0", "1", "2") and ds.test_targets.dtype == torch.int64
    f = nhw.astype(np.float64) / 255
    assert ds.mean[0] == pytest.approx(f.mean(), abs=1e-6) and ds.std[0] == pytest.approx(f.std(), abs=1e-6)

    nhwc = rng.integers(0, 256, (4, 5, 6, 3), dtype=np.uint8)
    floats = _split_arrays(nhwc.astype(np.float32) / 255, nhwc[:2] / 255.0)
    np.savez_compressed(tmp_path / "float.npz", **floats)
    ds = load_dataset("arrays", path=tmp_path / "float.npz", classes=["cat", "dog", "cow"])
    assert ds.train_images.shape == (4, 3, 5, 6) and ds.classes == ("cat", "dog", "cow")
    assert np.array_equal(ds.train_images.permute(0, 2, 3, 1).numpy(), nhwc)
    assert np.array_equal(ds.test_images.permute(0, 2, 3, 1).numpy(), nhwc[:2])


def test_arrays_safetensors_nchw(tmp_path):
    from safetensors.numpy import save_file

    x = np.random.default_rng(1).integers(0, 256, (4, 3, 7, 7), dtype=np.uint8)
    save_file(_split_arrays(x, x[:2]), str(tmp_path / "d.safetensors"))
    ds = load_dataset("arrays", root=tmp_path / "d.safetensors")
    assert ds.train_images.shape == (4, 3, 7, 7) and np.array_equal(ds.train_images.numpy(), x)
    assert len(ds.mean) == 3 and ds.source == str(tmp_path / "d.safetensors")


@pytest.mark.parametrize("case, match", [
    ("nan", "NaN"),
    ("range", r"\[0, 1\]"),
    ("shape", "shape"),
    ("alpha", "shape"),
    ("float_targets", "integer"),
    ("count", "one class index per image"),
])
def test_arrays_bad_content(tmp_path, case, match):
    x = np.random.default_rng(2).random((4, 5, 5), dtype=np.float32)
    arrays = _split_arrays(x, x[:2])
    if case == "nan":
        arrays["train_images"] = x.copy()
        arrays["train_images"][1, 2, 3] = np.nan
    elif case == "range":
        arrays["test_images"] = x[:2] * 255
    elif case == "shape":
        arrays["train_images"] = x.reshape(4, 5, 5, 1, 1)
    elif case == "alpha":
        arrays["train_images"] = np.zeros((4, 5, 5, 4), np.uint8)
    elif case == "float_targets":
        arrays["train_targets"] = np.zeros(4, np.float32)
    elif case == "count":
        arrays["train_targets"] = np.zeros(3, np.int64)
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ValueError, match=match):
        load_dataset("arrays", root=tmp_path / "bad.npz")


def test_arrays_missing_key_pickle_and_missing_file(tmp_path):
    x = np.zeros((4, 5, 5), np.uint8)
    arrays = _split_arrays(x, x[:2])
    del arrays["test_targets"]
    np.savez(tmp_path / "nokey.npz", **arrays, extra=np.ones(2))
    with pytest.raises(ValueError) as e:
        load_dataset("arrays", root=tmp_path / "nokey.npz")
    assert "'test_targets'" in str(e.value) and "extra" in str(e.value) and "train_images" in str(e.value)
    np.savez(tmp_path / "obj.npz", **_split_arrays(x, x[:2]), classes=np.array(["a", None], dtype=object))
    obj = load_dataset("arrays", root=tmp_path / "obj.npz")  # unused object arrays are skipped
    assert obj.num_classes == 3
    arrays = _split_arrays(x, x[:2])
    arrays["train_targets"] = np.array([0, 1, 2, None], dtype=object)
    np.savez(tmp_path / "pickled.npz", **arrays)
    with pytest.raises(ValueError, match="pickle"):
        load_dataset("arrays", root=tmp_path / "pickled.npz")
    with pytest.raises(DataNotFoundError, match="nothere.npz"):
        load_dataset("arrays", root=tmp_path / "nothere.npz")
    (tmp_path / "trunc.npz").write_bytes((tmp_path / "nokey.npz").read_bytes()[:50])
    with pytest.raises(CorruptFileError, match="trunc.npz"):
        load_dataset("arrays", root=tmp_path / "trunc.npz")
    with pytest.raises(ValueError, match="class names"):
        load_dataset("arrays", root=tmp_path / "obj.npz", classes=["only", "two"])


# ------------------------------------------------------------------------------------------- registry
def test_registry_names_and_typo():
    assert {"fashion-mnist", "mnist", "cifar10", "cifar100", "imagefolder", "tiny-imagenet", "digits",
            "arrays"} <= set(list_datasets())
    with pytest.raises(UnknownNameError) as e:
        load_dataset("fashion-mnst")
    assert "fashion-mnist" in str(e.value)

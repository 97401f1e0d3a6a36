"""A catalogue of user mistakes: through the CLI each ends with exit status 2, no traceback, one line that
says what to fix, and the output folder as it was; through the Python API, the right exception and message."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from softlabels.cli import main

FM = ("--dataset", "fashion-mnist")


@pytest.fixture
def files(tmp_path):
    """The files the cases name: a text file posing as an archive, broken sets, a file where a folder goes."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(10, 1, 28, 28), dtype=np.uint8)
    labels = np.eye(10, dtype=np.float32)
    out = {"tmp": tmp_path, "out": tmp_path / "out"}
    (tmp_path / "notes.npz").write_text("just some text\n")
    (tmp_path / "notes.txt").write_text("text\n")
    (tmp_path / "afile").write_text("a file, not a folder\n")
    zero = labels.copy()
    zero[3] = 0
    np.savez(tmp_path / "zero_row.npz", images=images, labels=zero)
    np.savez(tmp_path / "half_row.npz", images=images, labels=labels * 0.5)
    np.savez(tmp_path / "no_images.npz", pictures=images, labels=labels)
    np.savez(tmp_path / "rgba.npz", images=np.repeat(images, 4, axis=1), labels=labels)
    np.savez(tmp_path / "nine.npz", images=images[:9], labels=np.eye(9, dtype=np.float32))
    np.savez(tmp_path / "good.npz", images=images, labels=labels)
    save_file(
        {"images": torch.from_numpy(images), "labels": torch.from_numpy(labels)},
        str(tmp_path / "t.safetensors"),
    )
    data = (tmp_path / "t.safetensors").read_bytes()
    (tmp_path / "truncated.safetensors").write_bytes(data[:-40])
    save_file(
        {
            "images.pixels": torch.zeros(1, dtype=torch.uint8),
            "aux.targets": torch.zeros(1, dtype=torch.int64),
        },
        str(tmp_path / "badmeta.safetensors"),
        metadata={"manifest": "{not json", "images.codec": "raw"},
    )
    (tmp_path / "existing.safetensors").write_bytes(b"keep me")
    (tmp_path / "adir.safetensors").mkdir()
    (tmp_path / "sqlite_dir").mkdir()
    (tmp_path / "sqlite_dir" / "results.sqlite").mkdir()
    return out


# (argv with {tmp} and {out} placeholders, a fragment the one-line message must contain)
CASES = [
    ("run --ipc 0", "expected a positive integer"),
    ("run --ipc -3", "expected a positive integer"),
    ("run --ipc 1 1", "lists a value twice"),
    ("run --seeds 0", "expected a positive integer"),
    ("run --seeds -1", "expected a positive integer"),
    ("run --student-epochs 0", "expected a positive integer"),
    ("run --preset papr", "Did you mean 'paper'"),
    ("run --dataset fashion-mnst", "Did you mean 'fashion-mnist'"),
    ("run --device tpu", "use cpu, cuda"),
    ("run --device cuda", "CUDA is not available"),
    ("run --device cuda:7", "CUDA is not available"),
    ("run --workers 0", "--workers takes 'auto', 'ray' or a positive integer"),
    ("run --workers lots", "--workers takes 'auto', 'ray' or a positive integer"),
    ("run --protocol best", "invalid choice: 'best'"),
    ("run --precision fp8", "invalid choice: 'fp8'"),
    ("run --compile maybe", "invalid choice: 'maybe'"),
    ("run --out {tmp}/afile/sub", "is a file, not a folder"),
    ("run --out {tmp}/afile", "is a file, not a folder"),
    ("run --out {tmp}/sqlite_dir", "is a folder, not a results store"),
    ("study swap --out {tmp}/sqlite_dir", "is a folder, not a results store"),
    ("results --out {tmp}/sqlite_dir", "is a directory"),
    ("report --out {tmp}/sqlite_dir", "is a directory"),
    ("report --out {tmp}/missing", "is not a folder"),
    ("results --where nonsense", "--where takes KEY=VALUE"),
    ("results --limit 0", "expected a positive integer"),
    ("distill --hard -o {tmp}/x.safetensors", "the following arguments are required: --ipc"),
    ("distill --ipc 1 --hard -o {tmp}/x.npz", "written as safetensors"),
    ("distill --ipc 1 --hard --overwrite -o {tmp}/adir.safetensors", "is a directory"),
    ("distill --ipc 1 --hard --expert-epoch 2 -o {tmp}/x.safetensors", "--hard takes no soft-label options"),
    ("distill --ipc 1 --hard --temperature 2 -o {tmp}/x.safetensors", "drop --temperature"),
    ("distill --ipc 1 -o {tmp}/x.safetensors", "soft labels need --expert-epoch"),
    ("distill --ipc 1 --hard --codec fp61 -o {tmp}/x.safetensors", "Did you mean 'fp16'"),
    ("distill --ipc 1 --hard --image-codec zlip -o {tmp}/x.safetensors", "Did you mean 'zlib'"),
    (
        "distill --ipc 1 --expert-epoch 1 --transform topk:k=0 -o {tmp}/x.safetensors",
        "k must be an integer >= 1",
    ),
    ("distill --ipc 1 --hard --selection randm -o {tmp}/x.safetensors", "Did you mean 'random'"),
    ("distill --ipc 1 --expert-epoch 1 --temperature 0 -o {tmp}/x.safetensors", "temperature"),
    ("distill --ipc 1 --expert-epoch 1 --ensemble 0 -o {tmp}/x.safetensors", "expected a positive integer"),
    ("distill --ipc 1 --hard -o {tmp}/existing.safetensors", "pass overwrite=True (--overwrite)"),
    ("evaluate {tmp}/missing.npz", "does not exist"),
    ("evaluate {tmp}/notes.npz", "is not an .npz archive"),
    ("evaluate {tmp}/notes.txt", "use .npz or .safetensors"),
    ("evaluate {tmp}/zero_row.npz", "is all zero"),
    ("evaluate {tmp}/half_row.npz", "renormalise"),
    ("evaluate {tmp}/no_images.npz", "needs an 'images' array"),
    ("evaluate {tmp}/rgba.npz", "images are (4, 28, 28) but fashion-mnist images are (1, 28, 28)"),
    ("evaluate {tmp}/nine.npz", "9 columns but the dataset has 10 classes"),
    ("evaluate {tmp}/truncated.safetensors", "may be truncated"),
    ("evaluate {tmp}/badmeta.safetensors", "badmeta.safetensors: its manifest is not valid JSON"),
    ("evaluate {tmp}/good.npz --seeds 0", "expected a positive integer"),
    ("evaluate {tmp}/good.npz --student-epochs 0", "expected a positive integer"),
    ("budget -5KB", "must be a positive size"),
    ("budget 12XB", "unknown size unit"),
    ("budget lots", "cannot parse size"),
    ("budget 0", "size must be positive"),
    ("study", "give a study name"),
    ("study swapp", "Did you mean 'swap'"),
    ("study temperature -O temps=1,2", "does not take temps"),
    ("study swap -O nothing", "--option takes KEY=VALUE"),
    ("study swap --scale huge", "invalid choice: 'huge'"),
    ("study swap -O swaps=99", "swaps entries must be <= 9"),
    ("study swap -O seeds=0,0", "distinct"),
    ("study swap -O expert_epoch=99", "exceeds the expert's"),
    ("study expert-epoch -O epochs=1,99", "epochs entries must be <="),
    ("study scaling -O ks=0,99", "ks entries must be <= 10"),
    ("study labels -O epoch=99", "exceeds the expert's"),
    ("study bytes -O codecs=topk:k=0", "k must be an integer >= 1"),
    ("study bytes -O expert_epoch=99", "is not available"),
    ("expert train --epochs 0", "expected a positive integer"),
    ("expert train --width 0", "expected a positive integer"),
    ("expert train --lr -1", "lr must be"),
    ("expert train --model convnet-d9", "Did you mean 'convnet-d5'"),
]


def _snapshot(path):
    return sorted(str(p.relative_to(path)) for p in path.rglob("*")) if path.exists() else None


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's own usage errors
        code = e.code
    return code, capsys.readouterr().err


@pytest.mark.parametrize(("command", "fragment"), CASES, ids=[c for c, _ in CASES])
def test_a_bad_command_is_one_clear_line_and_changes_nothing(command, fragment, files, capsys):
    args = [a.format(tmp=files["tmp"], out=files["out"]) for a in command.split()]
    if "--out" not in args:
        args += ["--out", str(files["out"])]
    if args[0] not in ("results", "report") and "--dataset" not in args:
        args += [*FM, "--quiet"]
    tmp_before = _snapshot(files["tmp"])
    code, err = run_cli(args, capsys)
    assert code == 2, (code, err)
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith(("softlabels: error:", "usage:")) or "error:" in last, err
    assert fragment in err, err
    assert _snapshot(files["tmp"]) == tmp_before  # nothing written, nothing removed, nothing trained


def test_the_catalogue_is_long_enough():
    assert len(CASES) >= 60


# ---- the same mistakes through the Python API: the exception type names the problem ----------


def test_api_mistakes_raise_the_right_exception():
    import softlabels as sl
    from softlabels.registry import UnknownNameError
    from softlabels.units import parse_size

    with pytest.raises(ValueError, match="label kind must be one of 'soft', 'hard'"):
        sl.LabelSpec(kind="medium")
    with pytest.raises(ValueError, match="ipc"):
        sl.SetSpec(ipc=0)
    with pytest.raises(ValueError, match="at least one student seed"):
        sl.CellSpec(set=sl.SetSpec(ipc=1), student=sl.StudentRecipe(), seeds=())
    with pytest.raises(ValueError, match="distinct"):
        sl.CellSpec(set=sl.SetSpec(ipc=1), student=sl.StudentRecipe(), seeds=(1, 1))
    with pytest.raises(TypeError, match="sequence"):
        sl.CellSpec(set=sl.SetSpec(ipc=1), student=sl.StudentRecipe(), seeds=3)
    with pytest.raises(ValueError, match="both mean= and std="):
        sl.CompressedSet.from_arrays(torch.zeros(2, 1, 4, 4, dtype=torch.uint8), targets=torch.tensor([0, 1]),
                                     mean=(0.5,))
    with pytest.raises(ValueError, match="all zero"):
        sl.CompressedSet.from_arrays(
            torch.zeros(2, 1, 4, 4, dtype=torch.uint8), torch.tensor([[1.0, 0], [0, 0]])
        )
    with pytest.raises(ValueError, match="nesterov"):
        sl.StudentRecipe(optimizer="adamw", nesterov=True)
    with pytest.raises(ValueError, match="beyond"):
        sl.ExpertRecipe(steps=4, checkpoints=(8,))
    with pytest.raises(ValueError, match="workers"):
        sl.Lab("x", workers="lots")
    with pytest.raises(ValueError, match="use cpu, cuda"):
        sl.Lab("x", device="tpu")
    with pytest.raises(UnknownNameError, match="Did you mean 'fashion-mnist'"):
        sl.load_dataset("fashion-mnst")
    with pytest.raises(ValueError, match="Did you mean 'paper'"):
        sl.get_preset("papr")
    with pytest.raises(ValueError, match="size must be positive"):
        parse_size("-5KB")
    with pytest.raises(ValueError, match="use selection='all' with a file source"):
        sl.SetSpec(ipc=1, source="file:abc")
    with pytest.raises(UnknownNameError, match="Did you mean 'convnet-d5'"):
        sl.ExpertRecipe(model="convnet-d9")


def test_sets_that_were_wrongly_refused_or_misreported_now_load(tmp_path):
    """Targets covering classes 0-8 of a 10-class dataset are a 10-class set; a set whose manifest lacks its
    byte counts gets them measured."""
    import softlabels as sl

    images = torch.zeros(9, 1, 4, 4, dtype=torch.uint8)
    np.savez(tmp_path / "t.npz", images=images.numpy(), targets=np.arange(9))
    s = sl.CompressedSet.from_file(tmp_path / "t.npz", num_classes=10)
    assert s.num_classes == 10 and s.labels.shape == (9, 10)
    full = sl.CompressedSet.from_arrays(
        torch.zeros(2, 1, 4, 4, dtype=torch.uint8), targets=torch.tensor([0, 1])
    )
    path = full.save(tmp_path / "s.safetensors")
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    manifest = json.loads(meta["manifest"])
    manifest.pop("nbytes")
    meta["manifest"] = json.dumps(manifest)
    save_file(tensors, str(path), metadata=meta)
    assert sl.CompressedSet.load(path).nbytes == full.nbytes


def test_written_files_keep_the_users_umask(tmp_path):
    import os

    from softlabels.io import atomic_write_text

    old = os.umask(0o022)
    try:
        assert (atomic_write_text(tmp_path / "a.md", "x").stat().st_mode & 0o777) == 0o644
        os.umask(0o002)
        assert (atomic_write_text(tmp_path / "b.md", "x").stat().st_mode & 0o777) == 0o664
    finally:
        os.umask(old)

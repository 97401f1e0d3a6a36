import pytest

from softlabels.cli import main
from softlabels.presets import get_preset


def test_lists_datasets_and_models(capsys):
    assert main(["datasets"]) == 0
    out = capsys.readouterr().out
    for name in ("fashion-mnist", "cifar10", "cifar100", "imagefolder", "tiny-imagenet", "digits", "arrays"):
        assert name in out
    assert main(["models"]) == 0
    assert "convnet-d4" in capsys.readouterr().out


def test_unknown_dataset_is_a_clear_error(tmp_path, capsys):
    rc = main(["run", "--dataset", "fashion-mnst", "--out", str(tmp_path), "--quiet"])
    assert rc == 2
    assert "fashion-mnist" in capsys.readouterr().err


def test_unknown_preset(tmp_path, capsys):
    assert main(["run", "--preset", "papr", "--out", str(tmp_path)]) == 2
    assert "'paper'" in capsys.readouterr().err
    with pytest.raises(ValueError):
        get_preset("nope")


def test_missing_set_file(tmp_path, capsys):
    rc = main(["evaluate", str(tmp_path / "none.npz"), "--out", str(tmp_path)])
    assert rc == 2 and "does not exist" in capsys.readouterr().err


def test_results_on_empty_store(tmp_path, capsys):
    assert main(["results", "--out", str(tmp_path)]) == 0
    assert "0 runs" in capsys.readouterr().out
    assert main(["results", "--out", str(tmp_path), "--where", "nonsense"]) == 2


def test_run_precision_option_parses_and_is_validated():
    from softlabels.cli import build_parser

    assert build_parser().parse_args(["run", "--precision", "fp32"]).precision == "fp32"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "--precision", "fp8"])


def test_workers_option_parses_and_is_validated(capsys):
    from softlabels.cli import build_parser

    p = build_parser()
    assert p.parse_args(["run"]).workers == "auto"
    assert p.parse_args(["run", "--workers", "2"]).workers == 2
    assert p.parse_args(["study", "scaling", "--workers", "1"]).workers == 1
    assert p.parse_args(["study", "scaling", "--workers", "ray"]).workers == "ray"
    for bad in ("0", "two"):
        with pytest.raises(SystemExit):
            p.parse_args(["run", "--workers", bad])
    assert "--workers takes 'auto', 'ray' or a positive integer" in capsys.readouterr().err

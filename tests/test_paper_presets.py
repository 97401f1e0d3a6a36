"""The paper's presets read against Table 7 (paper.md section 9.4, typed in here by hand) field by field,
how ``paper`` resolves by dataset, and the chooser honouring fixed expert epochs."""

import pytest

from softlabels.config import ExpertRecipe
from softlabels.main_job import choose_expert_epochs, run_baseline, sweep_candidates
from softlabels.presets import PAPER_PRESET_BY_DATASET, Preset, get_preset, list_presets

# Table 7: dataset -> (expert arch, {IPC: (expert lr, student lr, expert epoch)})
TABLE_7 = {
    "imagenet-rn18": ("resnet18", {1: (5e-4, 1e-3, 11), 10: (5e-4, 5e-3, 43), 50: (1e-1, 5e-3, 30),
                                   100: (1e-1, 5e-3, 34), 200: (1e-1, 2e-3, 34)}),
    "imagenet-rn50": ("resnet50", {1: (5e-4, 1e-3, 9), 10: (5e-4, 5e-3, 24), 50: (1e-1, 5e-3, 30),
                                   100: (1e-1, 5e-3, 32), 200: (1e-1, 2e-3, 61)}),
    "tiny": ("convnet-d4", {1: (1e-2, 1e-2, 11), 10: (1e-2, 1e-1, 50), 50: (1e-2, 1e-1, 90),
                            100: (1e-2, 1e-1, 102)}),
    "cifar100": ("convnet-d3", {1: (1e-2, 1e-2, 13), 10: (1e-2, 1e-2, 36), 50: (1e-2, 1e-2, 125),
                                100: (1e-2, 1e-2, 125)}),
    "cifar10": ("convnet-d3", {1: (5e-4, 1e-2, 20), 10: (5e-4, 1e-2, 44), 50: (5e-4, 1e-2, 128),
                               100: (5e-4, 1e-2, 164)}),
}
# paper.md sections 3, 4 and 6.5: preset -> (Table 7 row, dataset, ZCA, student optimizer)
PRESET_ROWS = {
    "paper-cifar10": ("cifar10", "cifar10", True, "sgd"),
    "paper-cifar100": ("cifar100", "cifar100", False, "sgd"),
    "paper-tiny": ("tiny", "tiny-imagenet", False, "sgd"),
    "paper-imagenet": ("imagenet-rn18", "imagefolder", False, "adamw"),
    "paper-imagenet-rn50": ("imagenet-rn50", "imagefolder", False, "adamw"),
}


@pytest.mark.parametrize("name", sorted(PRESET_ROWS))
def test_each_paper_preset_matches_table_7(name):
    row, dataset, zca, optimizer = PRESET_ROWS[name]
    arch, per_ipc = TABLE_7[row]
    p = get_preset(name)
    assert name in list_presets() and p.dataset == dataset == p.data.name and p.data.zca is zca
    assert p.ipcs == tuple(per_ipc)
    assert p.seeds == (0, 1, 2, 3, 4)  # --num_eval 5
    for ipc, (expert_lr, student_lr, expert_epoch) in per_ipc.items():
        e, s = p.expert_for(ipc), p.student_for(ipc)
        assert (e.model, e.lr) == (arch, expert_lr), ipc
        assert p.fixed_expert_epoch(ipc) == expert_epoch, ipc
        assert expert_epoch <= e.epochs, ipc  # the expert trains at least that long
        assert (s.model, s.optimizer, s.lr, s.epochs, s.steps) == (arch, optimizer, student_lr, 3000, None)
        assert s.batch_size == 256 and s.dsa and s.schedule == "auto"  # StepLR / per-epoch cosine
        assert s.resolved_weight_decay == (5e-4 if optimizer == "sgd" else 0.01)


def test_conv_experts_are_the_reference_buffer_recipe_and_imagenet_torchvision_s():
    for name in ("paper-cifar10", "paper-cifar100", "paper-tiny"):
        e = get_preset(name).expert
        assert (e.momentum, e.weight_decay, e.batch_size, e.dsa, e.decay) == (0.0, 0.0, 256, True, False)
    e = get_preset("paper-imagenet").expert
    assert (e.momentum, e.weight_decay, e.batch_size, e.epochs, e.dsa) == (0.9, 1e-4, 256, 90, False)
    assert get_preset("paper-cifar10").expert.epochs == 400


def test_paper_chooses_by_dataset_and_presets_refuse_other_datasets():
    assert PAPER_PRESET_BY_DATASET == {"cifar10": "paper-cifar10", "cifar100": "paper-cifar100",
                                       "tiny-imagenet": "paper-tiny"}
    for dataset, name in PAPER_PRESET_BY_DATASET.items():
        assert get_preset("paper", dataset=dataset).name == name
    generic = get_preset("paper", dataset="mnist")  # no paper row: the generic bundle on that data
    assert generic.name == "paper" and generic.data.name == "mnist"
    assert get_preset("default", dataset="cifar10").data.name == "cifar10"
    assert get_preset("paper-cifar10", dataset="cifar10").name == "paper-cifar10"
    with pytest.raises(ValueError, match="written for cifar10, not cifar100"):
        get_preset("paper-cifar10", dataset="cifar100")
    with pytest.raises(ValueError, match="Did you mean 'paper-tiny'"):
        get_preset("paper-tiyn")


def test_student_lr_between_anchors_is_the_lower_anchors():
    p = get_preset("paper-tiny")
    assert [p.student_for(i).lr for i in (1, 2, 9, 10, 20, 500)] == [0.01, 0.01, 0.01, 0.1, 0.1, 0.1]
    assert p.fixed_expert_epoch(20) is None  # not in Table 7: the chooser sweeps there


def _tiny_preset(tiny_data_spec, tiny_expert, tiny_student, **kw):
    return Preset(name="tiny", data=tiny_data_spec, expert=tiny_expert, student=tiny_student, ipcs=(1, 2),
                  seeds=(0, 1), sweep_epochs=(1, 3), sweep_length=4, **kw)


def test_the_chooser_takes_fixed_epochs_without_a_sweep(tiny_lab, tiny_data_spec, tiny_expert, tiny_student):
    preset = _tiny_preset(tiny_data_spec, tiny_expert, tiny_student, expert_epoch_by_ipc={1: 2})
    expert = tiny_lab.expert(tiny_expert)
    choice = choose_expert_epochs(tiny_lab, preset, expert)
    assert choice.chosen[1] == 2 and choice.fixed == (1,)
    candidates, _ = sweep_candidates(preset, expert)
    assert set(choice.sweep) == {2} and list(choice.sweep[2]) == candidates  # IPC 2 was swept
    sweep_rows = tiny_lab.store.query(study="baseline-sweep")  # the sweep's students: IPC 2 only
    assert len(sweep_rows) == len(candidates) and {r.config["ipc"] for r in sweep_rows} == {2}
    too_late = _tiny_preset(tiny_data_spec, tiny_expert, tiny_student, expert_epoch_by_ipc={1: 9})
    with pytest.raises(ValueError, match="fixes expert epoch 9 at IPC 1.*epochs 0..3"):
        choose_expert_epochs(tiny_lab, too_late, expert)


def test_run_baseline_uses_each_ipcs_expert_and_lr(tiny_lab, tiny_data_spec, tiny_expert, tiny_student):
    other = tiny_expert.replace(lr=0.05)
    preset = _tiny_preset(tiny_data_spec, tiny_expert, tiny_student, expert_epoch_by_ipc={1: 1, 2: 3},
                          expert_by_ipc={1: other}, student_lr_by_ipc={1: 0.02, 2: 0.03})
    res = run_baseline(tiny_lab, preset, report=True)
    assert res.chosen == {1: 1, 2: 3} and res.fixed == (1, 2) and res.sweep == {}
    assert res.expert_keys[1] == tiny_lab.expert(other).key != res.expert_keys[2]
    assert res.expert_keys[2] == tiny_lab.expert(tiny_expert).key
    rows = tiny_lab.store.query(study="baseline")
    assert {(r.config["ipc"], r.config["student"]["lr"]) for r in rows} == {(1, 0.02), (2, 0.03)}
    assert not tiny_lab.store.query(study="baseline-sweep")
    assert "Expert epochs fixed" in res.report.read_text()
    assert isinstance(preset.expert_for(1), ExpertRecipe) and preset.expert_for(2) == tiny_expert

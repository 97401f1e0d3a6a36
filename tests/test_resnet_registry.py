"""ResNets in the model registry: a ResNet student trains end to end, and a ConvNet expert labels a
ResNet student's set (the paper's cross-architecture case) through Lab.evaluate."""

import pytest
import torch

from softlabels.config import ExpertRecipe, LabelSpec, StudentRecipe
from softlabels.models import MODELS, build_model, get_model_spec, init_model, list_models
from softlabels.resnets import ResNet
from softlabels.sets.spec import SetSpec


def count(m):
    return sum(p.numel() for p in m.parameters())


def test_resnets_are_registered_and_discoverable():
    names = list_models()
    for n in ("resnet18", "resnet34", "resnet50", "resnet18-gn", "resnet50-gn"):
        assert n in names and "ResNet" in names[n]
    # torchvision's parameter counts at 1000 classes, 224 px (11,689,512 and 25,557,032)
    size = {"in_channels": 3, "num_classes": 1000, "image_size": (224, 224)}
    assert count(build_model("resnet18", **size)) == 11_689_512
    assert count(build_model("resnet50", **size)) == 25_557_032


def test_width_and_norm_options_reach_the_resnet():
    m = init_model("resnet18-gn", 8, seed=0, in_channels=3, num_classes=5, image_size=(16, 16))
    assert isinstance(m, ResNet) and m.conv1.out_channels == 8 and m.stem == "cifar"
    assert isinstance(m.bn1, torch.nn.GroupNorm) and m.bn1.num_groups == 8  # gcd(32, 8)
    assert get_model_spec("resnet18", norm="groupnorm").norm == "groupnorm"
    with pytest.raises(ValueError, match="norm"):
        get_model_spec("resnet18", norm="layernorm")
    # same seed -> same weights; another seed -> others
    a, b, c = (init_model("resnet18", 8, seed=s, in_channels=3, num_classes=5, image_size=(16, 16))
               for s in (0, 0, 1))
    assert torch.equal(a.conv1.weight, b.conv1.weight) and not torch.equal(a.conv1.weight, c.conv1.weight)


def test_recipes_accept_resnet_names_and_reject_unknown_ones():
    assert StudentRecipe(model="resnet50", optimizer="adamw", schedule="cosine").model == "resnet50"
    assert ExpertRecipe(model="resnet18").model == "resnet18"
    with pytest.raises(ValueError, match="resnet18"):
        StudentRecipe(model="resnet19")
    assert "resnet18" in MODELS.names()


def _resnet_student(**kw):
    return StudentRecipe(model="resnet18", width=8, optimizer="adamw", lr=1e-3, schedule="cosine", steps=3,
                         batch_size=8, precision="fp32", compile="off", **kw)


@pytest.mark.parametrize("model", ["resnet18", "resnet18-gn"])
def test_a_resnet_student_trains_and_evaluates(tiny_lab, tiny_expert, model):
    traj = tiny_lab.expert(tiny_expert)
    student = _resnet_student().replace(model=model)
    res = tiny_lab.evaluate(SetSpec(ipc=2, label=LabelSpec(expert_epoch=2)), student=student, seeds=[0, 1],
                            experts=[traj])
    accs = [r["metrics"]["test_acc"] for r in res]
    assert all(0.0 <= a <= 1.0 for a in accs)
    again = tiny_lab.evaluate(SetSpec(ipc=2, label=LabelSpec(expert_epoch=2)), student=student, seeds=[0, 1],
                              experts=[traj])
    assert [r["cached"] for r in again] == [True, True]


def test_cross_architecture_cell_is_its_own_run(tiny_lab, tiny_expert, tiny_student):
    """ConvNet expert, ResNet student: the same set (images, labels) as the ConvNet student's cell, but a
    different run key, and the student's architecture is recorded."""
    traj = tiny_lab.expert(tiny_expert)
    spec = SetSpec(ipc=1, label=LabelSpec(expert_epoch=3))
    conv = tiny_lab.evaluate(spec, student=tiny_student, seeds=[0], experts=[traj])[0]
    res = tiny_lab.evaluate(spec, student=_resnet_student(), seeds=[0], experts=[traj])[0]
    assert res["config"]["student"]["model"] == "resnet18"
    assert conv["config"]["student"]["model"] == "convnet-d3"
    assert res["config"]["expert_key"] == conv["config"]["expert_key"] == traj.key
    assert len(tiny_lab.store) == 2


def test_a_resnet_expert_trains_and_labels(tiny_lab):
    recipe = ExpertRecipe(model="resnet18", width=8, epochs=2, train_images=64, batch_size=32,
                          precision="fp32")
    traj = tiny_lab.expert(recipe)
    assert traj.epochs_done == 2 and traj.manifest["model_spec"]["depth"] == 18
    net = traj.model(2)
    assert isinstance(net, ResNet) and not net.training
    spec = SetSpec(ipc=1, label=LabelSpec(expert_epoch=2))
    labels = tiny_lab.build_set(spec, experts=[traj]).labels
    assert torch.allclose(labels.sum(1), torch.ones(labels.shape[0]), atol=1e-5)

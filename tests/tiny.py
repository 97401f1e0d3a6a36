"""A seconds-long preset on the 4-class synthetic dataset, shared by the study and set-comparison tests."""

from __future__ import annotations

from softlabels.config import DataSpec, ExpertRecipe, StudentRecipe
from softlabels.presets import Preset

C = 4
DATA = DataSpec(name="synthetic", val_fraction=0.2)


def tiny_preset(seeds: tuple[int, ...] = (0, 1, 2)) -> Preset:
    return Preset(
        name="tiny", data=DATA,
        expert=ExpertRecipe(model="convnet-d3", width=8, epochs=3, train_images=200, precision="fp32"),
        student=StudentRecipe(model="convnet-d3", width=8, epochs=5, precision="fp32", compile="off"),
        ipcs=(1, 2), seeds=seeds, sweep_epochs=(1, 3), sweep_length=3,
    )

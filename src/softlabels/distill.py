"""``softlabels distill`` as one call: build the compressed set a :class:`SetSpec` names, and save it."""

from __future__ import annotations

from pathlib import Path

from .config import ExpertRecipe
from .experts import Trajectory
from .lab import Lab
from .sets.compressed import CompressedSet
from .sets.spec import SetSpec

__all__ = ["distill"]


def distill(lab: Lab, spec: SetSpec, *, expert: ExpertRecipe | Trajectory | None = None,
            output: str | Path | None = None, overwrite: bool = False) -> CompressedSet:
    """The set ``spec`` names on ``lab``'s data, labelled by the experts of ``expert`` (trained or reused:
    ``label.ensemble`` of them, seeds ``expert.seed``, ``+1``, ...), or by the given trajectory (e.g. one
    made elsewhere, :func:`softlabels.experts_external.load_external_trajectory`), saved to ``output``.

    The output must be a ``.safetensors`` file; an existing one is replaced only with ``overwrite``.
    """
    if output is not None:
        output = Path(output)
        if output.suffix != ".safetensors":
            raise ValueError(f"{output}: a compressed set is written as safetensors; name it "
                             f"{output.with_suffix('.safetensors').name}")
        if output.is_dir():
            raise IsADirectoryError(
                f"{output} is a directory; give a file name such as {output / 'set.safetensors'}"
            )
        if output.exists() and not overwrite:
            raise FileExistsError(f"{output} exists; pass overwrite=True (--overwrite) to replace it")
    n = spec.label.ensemble if spec.label.kind == "soft" else 0
    if n and expert is None:
        raise ValueError("soft labels need an expert recipe (expert=ExpertRecipe(...), or the preset's)")
    if isinstance(expert, Trajectory) and n > 1:  # one given expert (e.g. loaded from elsewhere)
        raise ValueError(f"an ensemble of {n} needs {n} experts; a given trajectory is one: use ensemble=1")
    experts = ([expert] if isinstance(expert, Trajectory) else lab.experts(expert, n)) if n else []
    cset = lab.build_set(spec, experts=experts)
    if output is not None:
        cset.save(output, overwrite=overwrite)
    return cset

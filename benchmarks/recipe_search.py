"""Which student recipe reaches a given accuracy in the fewest steps? Chosen on the VALIDATION split only.

Trains width-32 students on random real Fashion-MNIST images (image seed 0, the main job's) with hard labels
or an expert's soft labels, for each named recipe and step budget, and prints validation accuracy (the
selection criterion) beside test accuracy (reported, never selected on) and the time per student. Runs are
cached in ``--out`` (a softlabels results store), so the grid can grow without recomputation.

    python benchmarks/recipe_search.py --ipc 10 --steps 150 300 600 --recipes reference adamw adamw-ema
"""

from __future__ import annotations

import argparse
import statistics

from softlabels import CellSpec, Lab, LabelSpec, SetSpec, StudentRecipe, get_preset

BASE = StudentRecipe(model="convnet-d3", width=32, batch_size=256)
RECIPES = {
    "reference": BASE,  # SGD lr 0.01, momentum 0.9, StepLR(epochs // 4, 0.3): the paper's
    "sgd-cos": BASE.replace(lr=0.05, nesterov=True, schedule="cosine", warmup=0.05),
    "sgd-cos-hi": BASE.replace(lr=0.1, nesterov=True, schedule="cosine", warmup=0.05),
    "adamw": BASE.replace(optimizer="adamw", lr=3e-3, schedule="cosine", warmup=0.05),
    "adamw-lo": BASE.replace(optimizer="adamw", lr=1e-3, schedule="cosine", warmup=0.05),
    "adamw-hi": BASE.replace(optimizer="adamw", lr=1e-2, schedule="cosine", warmup=0.05),
    "adamw-lin": BASE.replace(optimizer="adamw", lr=3e-3, schedule="linear", warmup=0.05),
    "adamw-ema": BASE.replace(optimizer="adamw", lr=3e-3, schedule="cosine", warmup=0.05, ema=0.99),
    "adamw-tta": BASE.replace(optimizer="adamw", lr=3e-3, schedule="cosine", warmup=0.05, tta="flip"),
    "adamw-ls": BASE.replace(optimizer="adamw", lr=3e-3, schedule="cosine", warmup=0.05, label_smoothing=0.1),
    "adamw-wd": BASE.replace(optimizer="adamw", lr=3e-3, schedule="cosine", warmup=0.05, weight_decay=0.05),
    "adamw-ema-ls": BASE.replace(optimizer="adamw", lr=3e-3, schedule="cosine", warmup=0.05, ema=0.99,
                                 label_smoothing=0.1),
    "adamw-b128": BASE.replace(optimizer="adamw", lr=3e-3, schedule="cosine", warmup=0.05, batch_size=128),
    "adamw-b64": BASE.replace(optimizer="adamw", lr=3e-3, schedule="cosine", warmup=0.05, batch_size=64),
    "adamw-b32": BASE.replace(optimizer="adamw", lr=3e-3, schedule="cosine", warmup=0.05, batch_size=32),
    "adamw-b25": BASE.replace(optimizer="adamw", lr=3e-3, schedule="cosine", warmup=0.05, batch_size=25),
    "adamw-b50": BASE.replace(optimizer="adamw", lr=3e-3, schedule="cosine", warmup=0.05, batch_size=50),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ipc", type=int, nargs="+", default=[10])
    ap.add_argument("--steps", type=int, nargs="+", default=[150, 300, 600])
    ap.add_argument("--recipes", nargs="+", default=["reference", "adamw"], choices=sorted(RECIPES))
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--image-seeds", type=int, nargs="+", default=[0],
                    help="random image draws pooled in each line (IPC 1 depends on the draw)")
    ap.add_argument("--labels", default="hard", choices=["hard", "soft"])
    ap.add_argument("--expert-epoch", type=int, default=None, help="soft labels: the expert checkpoint")
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--out", default="/tmp/softlabels-recipe-search")
    args = ap.parse_args()
    preset = get_preset("default")
    lab = Lab(args.out, data=preset.data, progress=False)
    experts = ()
    if args.labels == "soft":
        experts = (lab.expert(preset.expert),)
        label = LabelSpec(kind="soft", expert_epoch=args.expert_epoch or experts[0].epochs_done)
    else:
        label = LabelSpec(kind="hard", codec="hard")
    grid = [(ipc, name, steps) for ipc in args.ipc for name in args.recipes for steps in args.steps]
    with lab:
        for ipc, name, steps in grid:
            cells = [CellSpec(set=SetSpec(ipc=ipc, label=label, image_seed=i),
                              student=RECIPES[name].replace(steps=steps, width=args.width),
                              seeds=tuple(range(args.seeds)), experts=experts, study="recipe-search")
                     for i in args.image_seeds]
            res = [r for rs in lab.evaluate_many(cells) for r in rs]
            val = [r["metrics"]["val_acc"] for r in res]
            test = [r["metrics"]["test_acc"] for r in res]
            wall = statistics.mean(r["metrics"]["train_s"] for r in res)
            print(f"IPC {ipc:3d} {args.labels} w{args.width} {name:11s} {steps:5d} steps: val "
                  f"{100 * statistics.mean(val):5.1f} ± {100 * statistics.pstdev(val):3.1f}  test "
                  f"{100 * statistics.mean(test):5.1f} ± {100 * statistics.pstdev(test):3.1f}  "
                  f"train {wall:6.1f} s/student{'' if not res[0]['cached'] else ' (cached)'}", flush=True)


if __name__ == "__main__":
    main()

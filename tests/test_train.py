import math

import pytest
import torch
import torch.nn.functional as F

from softlabels.analysis.stats import mean_std
from softlabels.config import StudentRecipe
from softlabels.engine.evaluation import EvalSets, predict
from softlabels.engine.loop import soft_cross_entropy, train_student, train_students
from softlabels.engine.runtime import Engine
from softlabels.models import init_model


def _data(tiny_ds):
    x = tiny_ds.normalize(tiny_ds.train_images[:40])
    y = F.one_hot(tiny_ds.train_targets[:40], 4).float()
    ev = EvalSets(tiny_ds.normalize(tiny_ds.test_images), tiny_ds.test_targets,
                  tiny_ds.normalize(tiny_ds.train_images[200:]), tiny_ds.train_targets[200:])
    return x, y, ev


def test_soft_cross_entropy_equals_torch_with_probability_targets():
    logits = torch.randn(7, 5)
    p = torch.softmax(torch.randn(7, 5), 1)
    assert torch.allclose(soft_cross_entropy(logits, p), torch.nn.CrossEntropyLoss()(logits, p), atol=1e-6)
    hard = torch.randint(0, 5, (7,))
    assert torch.allclose(
        soft_cross_entropy(logits, F.one_hot(hard, 5).float()), F.cross_entropy(logits, hard), atol=1e-6
    )


def test_same_seed_same_student_different_seed_different(tiny_ds, tiny_student):
    x, y, ev = _data(tiny_ds)
    a = train_student(x, y, tiny_student, seed=3, evals=ev)
    b = train_student(x, y, tiny_student, seed=3, evals=ev)
    c = train_student(x, y, tiny_student, seed=4, evals=ev)
    assert a.test_acc == b.test_acc and a.per_class == b.per_class and a.val_acc == b.val_acc
    assert (a.test_acc, a.per_class) != (c.test_acc, c.per_class) or a.train_acc != c.train_acc


def test_student_learns_the_training_set(tiny_ds):
    x, y, ev = _data(tiny_ds)
    r = train_student(x, y, StudentRecipe(model="convnet-d3", width=16, epochs=40, lr=0.05, dsa=False,
                                          precision="fp32", compile="off", batch_size=40), seed=0, evals=ev)
    assert r.train_acc == 1.0
    assert r.test_acc > 0.5  # 4 classes: chance is 0.25


def test_paper_protocol_records_checkpoints_and_max(tiny_ds):
    x, y, ev = _data(tiny_ds)
    rec = StudentRecipe(model="convnet-d3", width=8, epochs=6, eval_every=2, precision="fp32", compile="off")
    r = train_student(x, y, rec, seed=0, evals=ev, protocol="paper")
    assert [e for e, _ in r.curve] == [2, 4, 6]
    assert r.paper_acc == max(a for _, a in r.curve)
    assert r.curve[-1][1] == r.test_acc
    clean = train_student(x, y, rec, seed=0, evals=ev, protocol="clean")
    assert clean.paper_acc is None and [e for e, _ in clean.curve] == [6]
    assert clean.test_acc == r.test_acc  # evaluation does not perturb training


def test_train_students_and_summary(tiny_ds, tiny_student):
    x, y, ev = _data(tiny_ds)
    res = train_students(x, y, tiny_student, seeds=[0, 1], evals=ev)
    mean, std = mean_std([r.metric("clean") for r in res])
    assert len(res) == 2 and 0 <= mean <= 1 and std >= 0
    with pytest.raises(ValueError, match="seeds"):
        train_students(x, y, tiny_student, seeds=[], evals=ev)


def test_bad_labels_are_rejected(tiny_ds, tiny_student):
    x, y, ev = _data(tiny_ds)
    bad = y.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        train_student(x, bad, tiny_student, seed=0)
    with pytest.raises(ValueError, match="rows"):
        train_student(x, y[:10], tiny_student, seed=0)
    with pytest.raises(ValueError, match="protocol"):
        train_student(x, y, tiny_student, seed=0, protocol="best")


def test_recipe_validation():
    with pytest.raises(ValueError, match="optimizer"):
        StudentRecipe(optimizer="adam")
    with pytest.raises(ValueError):
        StudentRecipe(epochs=0)
    assert StudentRecipe(optimizer="adamw").resolved_weight_decay == 0.01
    assert StudentRecipe().resolved_weight_decay == 5e-4


def test_the_engine_has_no_reference_loop():
    with pytest.raises(TypeError):
        StudentRecipe(
            loop="reference"
        )  # the reference loop is a benchmark baseline (benchmarks/reference.py)


def _compiled_predict(engine: Engine, key, m, x):
    return predict(engine.inference_model(key, m), x, batch_size=1024, fixed_shape=True)


def test_compiled_evaluation_matches_eager_and_reuses_one_graph(tiny_ds):
    x = tiny_ds.normalize(tiny_ds.test_images)
    key = ("test-compiled-eval", 8)
    engine = Engine()
    for seed in (0, 1):  # the second model reuses the graph with its own weights copied in
        m = init_model("convnet-d3", 8, seed=seed, in_channels=1, num_classes=4, image_size=(12, 12),
                       device=torch.device("cpu"))
        assert torch.equal(_compiled_predict(engine, key, m, x), predict(m, x))
    assert len(engine.eval_graphs) == 1
    engine.close()
    assert len(engine.eval_graphs) == 0


def test_engine_graph_caches_are_bounded():
    engine = Engine(max_shapes=2)
    for width in (3, 4, 5):
        m = init_model("convnet-d1", width, seed=0, in_channels=1, num_classes=2, image_size=(4, 4))
        engine.eval_graphs.get(("bounded", width), m)  # compiled lazily: nothing is built until called
    assert len(engine.eval_graphs) == 2


def test_compile_policy_depends_on_planned_work_not_on_what_is_left():
    from softlabels.engine.runtime import CPU_COMPILE_MIN_STEPS, resolve_compile

    cpu = torch.device("cpu")
    assert resolve_compile("auto", cpu, total_steps=CPU_COMPILE_MIN_STEPS)
    assert not resolve_compile("auto", cpu, total_steps=CPU_COMPILE_MIN_STEPS - 1)
    assert resolve_compile("on", cpu, total_steps=1) and not resolve_compile("off", cpu, total_steps=10**9)
    # ResNets stay eager on CPU under auto (inductor's warm-up there outweighs any run), not when asked
    assert not resolve_compile("auto", cpu, total_steps=10**9, model="resnet18")
    assert resolve_compile("on", cpu, total_steps=1, model="resnet18")


@pytest.fixture
def compile_spy(monkeypatch):
    """The planned step counts the Lab passes to its compile policy, in call order (the policy decides)."""
    import softlabels.lab as lab_mod

    seen: list[int] = []
    real = lab_mod.resolve_compile
    monkeypatch.setattr(lab_mod, "resolve_compile", lambda s, d, *, total_steps, **kw: (
        seen.append(total_steps) or real(s, d, total_steps=total_steps, **kw)))
    return seen


def test_lab_decides_compilation_from_all_seeds_of_a_cell(tiny_lab, compile_spy):
    """A resumed cell (some seeds stored) must take the same compiled/eager path as a fresh one."""
    from softlabels.config import LabelSpec
    from softlabels.sets.spec import SetSpec

    seen = compile_spy
    rec = StudentRecipe(model="convnet-d3", width=8, epochs=2, precision="fp32", compile="off", batch_size=16)
    tiny_lab.evaluate(SetSpec(ipc=2, label=LabelSpec(kind="hard")), study="t", student=rec, seeds=[0])
    tiny_lab.evaluate(SetSpec(ipc=2, label=LabelSpec(kind="hard")), study="t", student=rec, seeds=[0, 1, 2])
    assert seen == [2 * 1 * 1, 2 * 1 * 3]  # epochs x batches x all seeds, though seed 0 was stored


@pytest.mark.slow
def test_compiled_training_is_deterministic_and_agrees_with_eager(tiny_ds):
    x, y, ev = _data(tiny_ds)
    rec = StudentRecipe(model="convnet-d3", width=8, epochs=8, precision="fp32", batch_size=16)
    a = train_student(x, y, rec, seed=5, evals=ev, compile_model=True)
    b = train_student(x, y, rec, seed=5, evals=ev, compile_model=True)  # reuses the graph, weights reloaded
    e = train_student(x, y, rec, seed=5, evals=ev, compile_model=False)
    assert (a.test_acc, a.per_class, a.train_acc) == (b.test_acc, b.per_class, b.train_acc)
    # fp32: compiled kernels round differently, so allow a few test images of 200 to flip
    assert abs(a.test_acc - e.test_acc) <= 0.03
    # one graph for every batch size, including a last batch of one image
    odd = train_student(x[:17], y[:17], rec, seed=1, compile_model=True)
    assert 0.0 <= odd.train_acc <= 1.0 and odd.epochs == rec.epochs


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_fused_optimizer_is_the_same_update_as_the_loop(optimizer):
    from softlabels.engine.loop import make_optimizer

    rec = StudentRecipe(model="convnet-d3", width=8, epochs=1, optimizer=optimizer)
    torch.manual_seed(0)
    a = [torch.nn.Parameter(torch.randn(5, 3)), torch.nn.Parameter(torch.randn(7))]
    b = [torch.nn.Parameter(p.detach().clone()) for p in a]
    fused = make_optimizer(rec, a)
    loop = type(fused)(
        b, **{k: fused.defaults[k] for k in ("lr", "momentum", "weight_decay") if k in fused.defaults}
    )
    assert fused.defaults.get("fused") and not loop.defaults.get("fused")
    for step in range(5):
        g = [torch.randn_like(p) for p in a]
        for p, q, gi in zip(a, b, g, strict=True):
            p.grad, q.grad = gi.clone(), gi.clone()
        for opt in (fused, loop):
            opt.param_groups[0]["lr"] = 0.1 * 0.3 ** (step // 2)  # the engine's schedule sets lr per epoch
            opt.step()
    for p, q in zip(a, b, strict=True):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-6)


def test_compiled_evaluation_compiles_one_graph_for_full_and_padded_chunks(tiny_ds):
    from torch._dynamo.utils import counters

    x = tiny_ds.normalize(tiny_ds.test_images).repeat(14, 1, 1, 1)[
        :1100
    ]  # a full chunk of 1024 and a padded one
    m = init_model(
        "convnet-d3",
        5,
        seed=3,
        in_channels=1,
        num_classes=4,
        image_size=(12, 12),  # a shape of its own
        device=torch.device("cpu"),
    )
    before = counters["stats"]["unique_graphs"]
    pred = _compiled_predict(Engine(), ("test-one-graph", 5), m, x)
    assert counters["stats"]["unique_graphs"] - before == 1  # inference tensors alike: no recompile
    assert torch.equal(pred, predict(m, x))


def test_evaluation_set_stem_stats_are_computed_once_and_reused(tiny_ds):
    x = tiny_ds.normalize(tiny_ds.test_images).clone()
    ev = EvalSets(x, tiny_ds.test_targets)
    models = [init_model("convnet-d3", 8, seed=s, in_channels=1, num_classes=4, image_size=(12, 12),
                         device=torch.device("cpu")) for s in (0, 1)]
    first = ev.stem_stats(models[0], "test", batch_size=7)  # chunked like an evaluation
    assert ev.stem_stats(models[1], "test") is first  # another model on the same set: no recomputation
    with torch.inference_mode():
        whole = models[0].stem_stats(x)
    for a, b in zip(first, whole, strict=True):
        torch.testing.assert_close(a, b)
    for m in models:
        assert torch.equal(predict(m, x, stats=first), predict(m, x))
        assert torch.equal(predict(m, x, batch_size=16, fixed_shape=True, stats=first), predict(m, x))
    assert EvalSets(x.clone(), tiny_ds.test_targets).stem_stats(models[0], "test") is not first  # its own
    x.mul_(2)  # changed in place: recomputed
    again = ev.stem_stats(models[0], "test")
    assert again is not first and not torch.allclose(again[0], first[0])
    bn = init_model("convnet-d3", 8, seed=0, in_channels=1, num_classes=4, image_size=(12, 12),
                    device=torch.device("cpu"))
    bn.fused_stem = False
    assert ev.stem_stats(bn, "test") is None
    import pickle

    assert pickle.loads(pickle.dumps(ev))._stats == {}  # workers recompute rather than receive them


@pytest.mark.slow
def test_two_model_shapes_compile_in_one_process(tiny_ds):
    """A second model shape must not turn the first one's dimensions symbolic (an inductor failure)."""
    rec = StudentRecipe(model="convnet-d3", width=8, epochs=2, precision="fp32", batch_size=16)
    big = torch.rand(24, 1, 28, 28)
    y = F.one_hot(torch.arange(24) % 4, 4).float()
    a = train_student(big, y, rec.replace(width=6), seed=0, compile_model=True)
    x, y2, _ = _data(tiny_ds)
    b = train_student(x, y2, rec, seed=0, compile_model=True)
    assert a.epochs == b.epochs == 2


def test_learning_rate_schedules():
    from softlabels.engine.loop import lr_at

    sgd = StudentRecipe(lr=0.1, epochs=8)
    assert [
        lr_at(sgd, step=0, epoch=e, total_steps=8, total_epochs=8) for e in (0, 1, 2, 7)
    ] == pytest.approx([0.1, 0.1, 0.03, 0.1 * 0.3**3])  # StepLR(epochs // 4 = 2, 0.3), the reference's
    adamw = StudentRecipe(optimizer="adamw", lr=0.1, epochs=4)
    assert lr_at(adamw, step=0, epoch=2, total_steps=4, total_epochs=4) == pytest.approx(
        0.05
    )  # cosine per epoch
    cos = StudentRecipe(optimizer="adamw", lr=0.1, schedule="cosine", warmup=0.25, steps=8)
    got = [lr_at(cos, step=s, epoch=0, total_steps=8, total_epochs=1) for s in range(8)]
    expected = [0.05, 0.1] + [
        0.1 * 0.5 * (1 + math.cos(math.pi * t / 6)) for t in range(6)
    ]  # warm-up 2 steps
    assert got == pytest.approx(expected)
    lin = cos.replace(schedule="linear", warmup=0.0)
    assert [lr_at(lin, step=s, epoch=0, total_steps=4, total_epochs=1) for s in range(4)] == pytest.approx(
        [0.1, 0.075, 0.05, 0.025])
    with pytest.raises(ValueError, match="warmup"):
        StudentRecipe(warmup=0.1)  # the reference schedule has no warm-up
    with pytest.raises(ValueError, match="nesterov"):
        StudentRecipe(optimizer="adamw", nesterov=True)


def test_a_step_budget_sets_the_length(tiny_ds):
    x, y, ev = _data(tiny_ds)  # 40 images, batch 16: 3 steps per epoch
    rec = StudentRecipe(model="convnet-d3", width=8, steps=7, batch_size=16, precision="fp32", compile="off")
    assert rec.total_steps(40) == 7 and rec.total_epochs(40) == 3
    r = train_student(x, y, rec, seed=0, evals=ev)
    assert r.epochs == 3 and 0 <= r.test_acc <= 1
    assert StudentRecipe(epochs=5, batch_size=16).total_steps(40) == 15


def test_label_smoothing_is_training_on_smoothed_labels(tiny_ds):
    x, y, ev = _data(tiny_ds)
    rec = StudentRecipe(model="convnet-d3", width=8, epochs=3, batch_size=16, precision="fp32", compile="off")
    a = train_student(x, y, rec.replace(label_smoothing=0.2), seed=1, return_state=True)
    b = train_student(x, 0.8 * y + 0.2 / y.shape[1], rec, seed=1, return_state=True)
    assert all(torch.equal(a.state[k], b.state[k]) for k in a.state)


def test_weight_average_follows_its_formula():
    from softlabels.engine.loop import _WeightAverage

    p = torch.nn.Parameter(torch.zeros(3))
    avg = _WeightAverage([p], decay=0.9)
    expected = torch.zeros(3)
    for t in range(1, 6):
        with torch.no_grad():
            p.add_(1.0)
        avg.update()
        d = min(0.9, (1 + t) / (10 + t))
        expected = d * expected + (1 - d) * p.detach()
    torch.testing.assert_close(avg.avg[0], expected)


def test_flip_averaging_adds_the_mirrors_logits(tiny_ds):
    x = tiny_ds.normalize(tiny_ds.test_images)
    m = init_model("convnet-d3", 8, seed=2, in_channels=1, num_classes=4, image_size=(12, 12))
    with torch.no_grad():
        expected = (m.eval()(x) + m(x.flip(3))).argmax(1)
    ev = EvalSets(x, tiny_ds.test_targets)
    got = predict(
        m, x, flip=True, stats=ev.stem_stats(m, "test"), flip_stats=ev.stem_stats(m, "test", flip=True)
    )
    assert torch.equal(got, expected) and torch.equal(predict(m, x, flip=True), expected)


def test_a_weight_average_is_what_is_judged(tiny_ds):
    xs, ys, _ = _data(tiny_ds)
    rec = StudentRecipe(model="convnet-d3", width=8, epochs=3, batch_size=16, precision="fp32", compile="off")
    plain = train_student(xs, ys, rec, seed=0, return_state=True).state
    averaged = train_student(xs, ys, rec.replace(ema=0.5), seed=0, return_state=True).state
    assert not torch.equal(plain["classifier.weight"], averaged["classifier.weight"])


def test_the_compile_choice_weighs_every_cell_of_a_model_shape_in_a_call(tiny_lab, compile_spy):
    """One graph serves all cells of a shape: small cells that together repay compiling are compiled."""
    from softlabels.config import LabelSpec
    from softlabels.lab import CellSpec
    from softlabels.sets.spec import SetSpec

    seen = compile_spy
    rec = StudentRecipe(model="convnet-d3", width=8, epochs=2, precision="fp32", compile="off", batch_size=16)
    cells = [
        CellSpec(set=SetSpec(ipc=ipc, label=LabelSpec(kind="hard")), student=rec, seeds=(0, 1), study="t")
        for ipc in (1, 2)
    ]
    other = CellSpec(
        set=SetSpec(ipc=1, label=LabelSpec(kind="hard")), student=rec.replace(width=4), seeds=(0,), study="t"
    )
    tiny_lab.evaluate_many([*cells, other])
    assert seen == [2 * 1 * 2 + 2 * 1 * 2] * 2 + [2]  # width 8: both cells' steps; width 4: its own


def test_even_batches_split_an_epoch_into_equal_batches():
    from softlabels.config import StudentRecipe

    fixed = StudentRecipe(model="convnet-d3", width=8, batch_size=32, steps=8)
    even = fixed.replace(even_batches=True)
    sizes = lambda r, n: [e - s for s, e in r.batch_bounds(n)]  # noqa: E731
    assert sizes(fixed, 100) == [32, 32, 32, 4] and sizes(even, 100) == [25, 25, 25, 25]
    assert sizes(even, 30) == [30] and sizes(even.replace(batch_size=25), 30) == [15, 15]
    assert sizes(even.replace(batch_size=25), 103) == [21, 21, 21, 20, 20]
    assert sizes(fixed, 10) == sizes(even, 10) == [10]
    for r, n in ((fixed, 100), (even, 103), (even, 7)):
        bounds = r.batch_bounds(n)
        assert len(bounds) == r.steps_per_epoch(n) and bounds[0][0] == 0 and bounds[-1][1] == n
        assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:], strict=False))
    # results keys: the option is absent unless set, so earlier runs keep their keys
    assert "even_batches" not in fixed.identity() and even.identity()["even_batches"] is True


def test_even_batches_train_the_same_students_where_batches_are_already_equal():
    import torch

    from softlabels.config import StudentRecipe
    from softlabels.engine.loop import train_student

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(20, 1, 28, 28, generator=g), torch.eye(4)[torch.arange(20) % 4]
    base = StudentRecipe(model="convnet-d3", width=8, steps=6, batch_size=10, precision="fp32", compile="off")
    a = train_student(x, y, base, seed=0, return_state=True).state
    b = train_student(x, y, base.replace(even_batches=True), seed=0, return_state=True).state
    assert all(torch.equal(a[k], b[k]) for k in a)
    c = train_student(x, y, base.replace(batch_size=8), seed=0, return_state=True).state  # 8, 8, 4
    d = train_student(x, y, base.replace(batch_size=8, even_batches=True), seed=0, return_state=True).state
    assert not all(torch.equal(c[k], d[k]) for k in c)  # 7, 7, 6

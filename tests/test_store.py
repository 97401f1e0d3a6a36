"""Tests for the SQLite results store: round trips, resume, concurrency, filters and exports."""

from __future__ import annotations

import csv
import math
import multiprocessing as mp
import sqlite3
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from softlabels.io import config_hash
from softlabels.store import SCHEMA_VERSION, ResultsStore, RunRecord, SchemaVersionError
from softlabels.validation import CorruptFileError

PROMOTED = ["dataset", "model", "ipc", "expert_key", "expert_epoch", "temperature", "label", "selection",
            "seed", "protocol", "test_acc", "val_acc", "final_acc", "paper_acc"]


def cfg(**over: object) -> dict:
    base = {"dataset": "fmnist", "model": "convnet", "ipc": 10, "expert_key": "abc123", "expert_epoch": 5,
            "temperature": 1.5, "label": "soft", "selection": "random", "seed": 0, "protocol": "fixed",
            "lr": 0.01, "opt": {"name": "sgd", "momentum": 0.9}}
    base.update(over)
    return base


def grid() -> list[dict]:
    return [cfg(ipc=ipc, seed=seed) for ipc in (1, 10, 50) for seed in (0, 1)]


@pytest.fixture
def store(tmp_path: Path):
    with ResultsStore(tmp_path / "results.db") as s:
        yield s


# ---------------------------------------------------------------------- round trip and keys
def test_put_get_round_trip_nested_metrics_and_lists(store: ResultsStore) -> None:
    metrics = {"test_acc": 0.81, "val_acc": 0.8, "per_class": [0.9, 0.7, 0.85], "curve": {"loss": [1.0, 0.5]},
               "nan_metric": math.nan, "inf_metric": math.inf}
    key = store.put(cfg(), metrics, study="fig3", wall_s=12.5, nbytes=4096, codec="fp16", version="0.1.0")
    assert key == ResultsStore.key(cfg()) == config_hash(cfg())
    assert len(key) == 16 and all(ch in "0123456789abcdef" for ch in key)
    rec = store.get(key)
    assert isinstance(rec, RunRecord)
    assert rec.key == key and rec.study == "fig3" and rec.config == cfg()
    assert rec.metrics["per_class"] == [0.9, 0.7, 0.85] and rec.metrics["curve"] == {"loss": [1.0, 0.5]}
    assert math.isnan(rec.metrics["nan_metric"]) and rec.metrics["inf_metric"] == math.inf
    assert (rec.wall_s, rec.nbytes, rec.codec, rec.version) == (12.5, 4096, "fp16", "0.1.0")
    assert rec.created.endswith("+00:00")
    assert store.has(key) and key in store and len(store) == 1
    assert store.get("0" * 16) is None and not store.has("0" * 16)
    with pytest.raises(AttributeError):
        rec.key = "x"  # type: ignore[misc]


def test_promoted_columns_are_filled_for_sql_users(store: ResultsStore) -> None:
    key = store.put(cfg(), {"test_acc": 0.5, "paper_acc": 0.6})
    con = sqlite3.connect(store.path)
    row = con.execute(f"SELECT {', '.join(PROMOTED)} FROM runs WHERE key = ?", (key,)).fetchone()
    con.close()
    assert row == (
        "fmnist",
        "convnet",
        10,
        "abc123",
        5,
        1.5,
        "soft",
        "random",
        0,
        "fixed",
        0.5,
        None,
        None,
        0.6,
    )


def test_key_stable_across_ordering_and_distinct_for_different_configs() -> None:
    a = {"b": 1, "a": {"y": 2.5, "x": [1, 2]}}
    b = {"a": {"x": [1, 2], "y": 2.5}, "b": 1}
    assert ResultsStore.key(a) == ResultsStore.key(b)
    assert ResultsStore.key(cfg(seed=0)) != ResultsStore.key(cfg(seed=1))
    assert ResultsStore.key(cfg(temperature=1.5)) != ResultsStore.key(cfg(temperature=1.25))
    assert len({ResultsStore.key(c) for c in grid()}) == len(grid())


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.dictionaries(st.text(min_size=1, max_size=8),
                       st.one_of(st.integers(-10**6, 10**6), st.floats(allow_nan=False, allow_infinity=False),
                                 st.text(max_size=8), st.booleans(), st.none()),
                       max_size=6),
       st.randoms(use_true_random=False))
def test_key_ignores_insertion_order_property(config: dict, rnd) -> None:
    items = list(config.items())
    rnd.shuffle(items)
    assert ResultsStore.key(dict(items)) == ResultsStore.key(config)


def test_bad_inputs_are_rejected(store: ResultsStore) -> None:
    with pytest.raises(TypeError, match="JSON-able"):
        store.put({"x": object()}, {})
    with pytest.raises(TypeError, match="mapping"):
        store.put([("a", 1)], {})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="finite"):
        store.put({"lr": math.nan}, {})
    with pytest.raises(ValueError, match="wall_s"):
        store.put(cfg(), {}, wall_s=-1.0)
    assert len(store) == 0


# ---------------------------------------------------------------------- replace, missing, resume
def test_reput_replaces_and_missing_preserves_order(store: ResultsStore) -> None:
    configs = grid()
    store.put(configs[1], {"test_acc": 0.1})
    store.put(configs[4], {"test_acc": 0.2})
    key = store.put(configs[1], {"test_acc": 0.9}, study="again")
    assert len(store) == 2
    rec = store.get(key)
    assert rec is not None and rec.metrics == {"test_acc": 0.9} and rec.study == "again"
    assert store.missing(configs) == [configs[i] for i in (0, 2, 3, 5)]
    assert store.missing(iter(configs)) == [configs[i] for i in (0, 2, 3, 5)]
    assert store.missing([]) == []


def test_resume_after_interruption_runs_only_missing(tmp_path: Path) -> None:
    configs = grid()
    executed: list[dict] = []

    def study(store: ResultsStore, fail_after: int | None = None) -> None:
        for c in store.missing(configs):
            if fail_after is not None and len(executed) == fail_after:
                raise KeyboardInterrupt("interrupted")
            executed.append(c)
            store.put(c, {"test_acc": c["ipc"] / 100}, study="resume")

    with ResultsStore(tmp_path / "r.db") as s, pytest.raises(KeyboardInterrupt):
        study(s, fail_after=3)
    assert len(executed) == 3
    first = list(executed)
    executed.clear()
    with ResultsStore(tmp_path / "r.db") as s:
        study(s)
        assert executed == [c for c in configs if c not in first] and len(executed) == 3
        assert len(s) == 6 and s.missing(configs) == []
    executed.clear()
    with ResultsStore(tmp_path / "r.db") as s:
        study(s)
    assert executed == []


def test_persists_across_reopen(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "results.db"
    s = ResultsStore(path)
    key = s.put(cfg(), {"test_acc": 0.7, "per_class": [1, 0]}, study="a")
    s.close()
    s.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        len(s)
    with ResultsStore(path) as s2:
        assert len(s2) == 1 and s2.studies() == ["a"]
        rec = s2.get(key)
        assert rec is not None and rec.metrics == {"test_acc": 0.7, "per_class": [1, 0]}
        assert s2._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert s2._db.execute("PRAGMA busy_timeout").fetchone()[0] == 30000


# ---------------------------------------------------------------------- concurrency
def _writer(path: str, worker: int, n: int, barrier) -> None:
    barrier.wait(timeout=120)  # both processes have imported everything: now write at the same time
    with ResultsStore(path) as s:
        for i in range(n):
            s.put(
                {"worker": worker, "i": i}, {"test_acc": i / n, "per_class": [i, worker]}, study=f"w{worker}"
            )


def test_concurrent_writers_from_two_processes(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    ResultsStore(path).close()
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(2)
    procs = [ctx.Process(target=_writer, args=(str(path), w, 20, barrier)) for w in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=180)
    assert [p.exitcode for p in procs] == [0, 0]
    with ResultsStore(path) as s:
        assert len(s) == 40
        assert s.studies() == ["w0", "w1"]
        assert len(s.query(study="w1")) == 20


# ---------------------------------------------------------------------- query
@pytest.fixture
def filled(store: ResultsStore) -> ResultsStore:
    for i, c in enumerate(grid()):
        store.put(c, {"test_acc": 0.1 * i}, study="a" if c["seed"] == 0 else "b")
    store.put(cfg(dataset="cifar10", ipc=10, label="hard", lr=0.1), {"test_acc": 0.3}, study="a")
    return store


def test_query_filters(filled: ResultsStore) -> None:
    assert len(filled.query()) == 7
    assert [r.config["ipc"] for r in filled.query(study="b")] == [1, 10, 50]
    assert {r.config["dataset"] for r in filled.query(where={"ipc": 10})} == {"fmnist", "cifar10"}
    assert len(filled.query(where={"dataset": "fmnist", "ipc": 10})) == 2
    assert len(filled.query(where={"ipc": [1, 50]})) == 4
    assert len(filled.query(where={"ipc": (1, 50), "seed": 1})) == 2
    assert len(filled.query(study="a", where={"label": "hard"})) == 1
    assert len(filled.query(where={"config.lr": 0.1})) == 1
    assert len(filled.query(where={"config.lr": [0.01, 0.1]})) == 7
    assert len(filled.query(where={"config.dataset": "cifar10", "seed": 0})) == 1
    assert filled.query(where={"config.nope": 1}) == []
    assert filled.query(where={"ipc": []}) == []
    assert len(filled.query(where={"val_acc": None})) == 7
    assert len(filled.query(limit=2)) == 2
    assert filled.query(where={"test_acc": 0.0})[0].config == grid()[0]
    assert filled.studies() == ["a", "b"]


def test_unknown_filter_lists_valid_names(filled: ResultsStore) -> None:
    with pytest.raises(ValueError, match="unknown filter 'lr'.*dataset.*ipc.*config.<key>"):
        filled.query(where={"lr": 0.1})
    with pytest.raises(ValueError, match="unknown filter"):
        filled.export_csv("never.csv", where={"config.": 1})


# ---------------------------------------------------------------------- export
def test_to_rows_flattens(filled: ResultsStore) -> None:
    rows = filled.to_rows()
    assert len(rows) == 7 and len({tuple(r) for r in rows}) == 1  # same columns everywhere
    r = rows[0]
    assert r["config.opt.name"] == "sgd" and r["config.opt.momentum"] == 0.9
    assert r["metrics.test_acc"] == 0.0 and r["test_acc"] == 0.0 and r["ipc"] == 1
    rows = filled.to_rows([filled.get(filled.put({"a": 1}, {"pc": [1, 2], "d": {"e": {"f": 3}}}))])
    assert rows[0]["metrics.pc"] == "[1, 2]" and rows[0]["metrics.d.e.f"] == 3 and rows[0]["dataset"] is None


def test_export_csv(filled: ResultsStore, tmp_path: Path) -> None:
    out = tmp_path / "out" / "runs.csv"
    assert filled.export_csv(out) == 7
    with open(out, newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
        header = reader.fieldnames or []
    assert len(rows) == 7
    assert set(PROMOTED) <= set(header) and "metrics.test_acc" in header and "config.opt.name" in header
    assert {r["key"] for r in rows} == {r.key for r in filled.query()}
    assert filled.export_csv(out, study="b") == 3
    with open(out, newline="") as f:
        assert len(list(csv.DictReader(f))) == 3
    assert filled.export_csv(out, where={"ipc": 999}) == 0
    with open(out, newline="") as f:
        assert set(PROMOTED) <= set(next(csv.reader(f)))


def test_export_parquet(filled: ResultsStore, tmp_path: Path) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    out = tmp_path / "runs.parquet"
    assert filled.export_parquet(out, where={"dataset": "fmnist"}) == 6
    table = pq.read_table(out)
    assert table.num_rows == 6
    assert set(PROMOTED) <= set(table.column_names) and "metrics.test_acc" in table.column_names
    assert table.to_pylist() == filled.to_rows(filled.query(where={"dataset": "fmnist"}))
    filled.put({"ipc": "many"}, {"test_acc": "n/a"})  # mixed types in a column still export
    assert filled.export_parquet(out) == 8
    assert pq.read_table(out).num_rows == 8


def test_export_parquet_without_pyarrow(filled: ResultsStore, tmp_path: Path, monkeypatch) -> None:
    for mod in [m for m in sys.modules if m == "pyarrow" or m.startswith("pyarrow.")]:
        monkeypatch.delitem(sys.modules, mod)
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    with pytest.raises(ImportError, match=r"pip install 'softlabels\[parquet\]'"):
        filled.export_parquet(tmp_path / "x.parquet")


# ---------------------------------------------------------------------- bad files
def test_garbage_file_raises_corrupt_file_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.db"
    bad.write_bytes(b"this is definitely not a database\n" * 100)
    with pytest.raises(CorruptFileError, match="not a softlabels results database"):
        ResultsStore(bad)
    fake = tmp_path / "fake.db"
    fake.write_bytes(b"SQLite format 3\x00" + b"\xff" * 4000)
    with pytest.raises(CorruptFileError):
        ResultsStore(fake)
    foreign = tmp_path / "foreign.db"  # a real SQLite file from some other program
    con = sqlite3.connect(foreign)
    con.execute("CREATE TABLE runs (x INTEGER)")
    con.commit()
    con.close()
    with pytest.raises(CorruptFileError, match="pass a different path"):
        ResultsStore(foreign)
    empty = tmp_path / "empty.db"
    empty.touch()
    with ResultsStore(empty) as s:
        assert len(s) == 0


def test_newer_schema_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    ResultsStore(path).close()
    con = sqlite3.connect(path)
    with con:
        con.execute("UPDATE meta SET value = ? WHERE name = 'schema_version'", (str(SCHEMA_VERSION + 1),))
    con.close()
    with pytest.raises(SchemaVersionError, match="upgrade softlabels"):
        ResultsStore(path)

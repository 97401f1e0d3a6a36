"""The results store: an embedded SQLite database with one row per student run, keyed by a config hash.

A study asks :meth:`ResultsStore.missing` which of its configs are not stored yet, runs only those and
:meth:`ResultsStore.put` s each result as soon as it finishes, so an interrupted or repeated study resumes
where it stopped. The file uses WAL mode and a 30 s busy timeout so that several processes (Ray workers)
can write to it at once; keep it on a local disk (SQLite locking is unreliable on network file systems).

Plain SQL users can read the ``runs`` table directly: besides the JSON ``config`` and ``metrics`` it has
promoted columns (``dataset``, ``ipc``, ``test_acc``, ...) copied out of them.
"""

from __future__ import annotations

import csv
import io
import json
import math
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .io import atomic_write_bytes, atomic_write_text, canonical_json, config_hash
from .validation import CorruptFileError, SoftlabelsError, check_positive_float, check_positive_int

__all__ = ["CONFIG_COLUMNS", "METRIC_COLUMNS", "SCHEMA_VERSION", "ResultsStore", "RunRecord",
           "SchemaVersionError"]

SCHEMA_VERSION = 1
_SQLITE_MAGIC = b"SQLite format 3\x00"
_BUSY_TIMEOUT_S = 30.0
_CHUNK = 500  # host parameters per IN (...) query; well under SQLite's limit

#: Promoted columns filled from top-level config keys of the same name, with their SQL types.
CONFIG_COLUMNS: dict[str, str] = {
    "dataset": "TEXT", "model": "TEXT", "ipc": "INTEGER", "expert_key": "TEXT", "expert_epoch": "INTEGER",
    "temperature": "REAL", "label": "TEXT", "selection": "TEXT", "seed": "INTEGER", "protocol": "TEXT",
}
#: Promoted columns filled from metrics keys of the same name.
METRIC_COLUMNS: dict[str, str] = {
    "test_acc": "REAL",
    "val_acc": "REAL",
    "final_acc": "REAL",
    "paper_acc": "REAL",
}
_PROMOTED = (*CONFIG_COLUMNS, *METRIC_COLUMNS)
_BASE = ("key", "study", "config", "metrics", "wall_s", "nbytes", "codec", "version", "created")
_FILTERABLE = ("key", "study", "codec", "version", *_PROMOTED)
_ROW_HEAD = ("key", "study", *_PROMOTED, "wall_s", "nbytes", "codec", "version", "created")

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    key TEXT PRIMARY KEY,
    study TEXT NOT NULL DEFAULT '',
    config TEXT NOT NULL,
    metrics TEXT NOT NULL,
    wall_s REAL,
    nbytes INTEGER,
    codec TEXT,
    version TEXT,
    created TEXT NOT NULL,
    {", ".join(f"{c} {t}" for c, t in {**CONFIG_COLUMNS, **METRIC_COLUMNS}.items())}
);
CREATE INDEX IF NOT EXISTS runs_study ON runs (study);
CREATE INDEX IF NOT EXISTS runs_dataset_ipc ON runs (dataset, ipc);
"""


class SchemaVersionError(SoftlabelsError, RuntimeError):
    """The results database was written by a newer softlabels with a schema this version cannot read."""


@dataclass(frozen=True)
class RunRecord:
    """One stored student run. ``created`` (ISO 8601, UTC) is metadata only, never a seed."""

    key: str
    study: str
    config: dict[str, Any] = field(repr=False)
    metrics: dict[str, Any] = field(repr=False)
    wall_s: float
    nbytes: int | None
    codec: str
    version: str
    created: str


class ResultsStore:
    """SQLite-backed store of student runs; see the module docstring.

    >>> with ResultsStore("results.db") as store:            # doctest: +SKIP
    ...     for cfg in store.missing(grid):
    ...         store.put(cfg, run(cfg), study="fig3")
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.RLock()
        self._con: sqlite3.Connection | None = None
        if self.path.is_dir():
            raise IsADirectoryError(f"results store path {self.path} is a directory; pass a file such as "
                                    f"{self.path / 'results.db'}")
        self._check_header()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            con = sqlite3.connect(str(self.path), timeout=_BUSY_TIMEOUT_S, isolation_level=None,
                                  check_same_thread=False)
        except sqlite3.Error as e:
            raise OSError(f"cannot open results store {self.path}: {e}") from None
        try:
            con.execute(f"PRAGMA busy_timeout = {int(_BUSY_TIMEOUT_S * 1000)}")
            con.execute("PRAGMA journal_mode = WAL")
            con.execute("PRAGMA synchronous = NORMAL")
            self._init_schema(con)
        except sqlite3.DatabaseError as e:
            con.close()
            # "file is not a database" / "malformed" / a foreign database whose tables lack our columns;
            # anything else (locked, read-only, disk full) is re-raised as it is
            msg = str(e)
            if type(e) is sqlite3.DatabaseError or any(
                w in msg for w in ("malformed", "not a database", "no such")
            ):
                raise self._corrupt(msg) from None
            raise
        except BaseException:
            con.close()
            raise
        self._con = con

    # ------------------------------------------------------------------ opening
    def _corrupt(self, why: str) -> CorruptFileError:
        return CorruptFileError(
            f"{self.path} is not a softlabels results database ({why}). If it is a store that was damaged, "
            "move it aside and re-run the study to recompute; otherwise pass a different path."
        )

    def _check_header(self) -> None:
        try:
            with open(self.path, "rb") as f:
                head = f.read(len(_SQLITE_MAGIC))
        except FileNotFoundError:
            return
        if head and head != _SQLITE_MAGIC:  # an empty file is a valid, empty SQLite database
            raise self._corrupt("it does not start with the SQLite header")

    def _init_schema(self, con: sqlite3.Connection) -> None:
        con.execute("BEGIN IMMEDIATE")
        try:
            for stmt in filter(str.strip, _SCHEMA.split(";")):
                con.execute(stmt)
            row = con.execute("SELECT value FROM meta WHERE name = 'schema_version'").fetchone()
            if row is None:
                con.execute(
                    "INSERT INTO meta (name, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
                )
                found = SCHEMA_VERSION
            else:
                try:
                    found = int(row[0])
                except ValueError:
                    raise self._corrupt(f"schema_version is {row[0]!r}") from None
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        if found > SCHEMA_VERSION:
            raise SchemaVersionError(
                f"{self.path} has results-store schema version {found}, but this softlabels only reads "
                f"version {SCHEMA_VERSION}; upgrade softlabels (pip install -U softlabels) to open it"
            )

    @property
    def _db(self) -> sqlite3.Connection:
        if self._con is None:
            raise RuntimeError(f"ResultsStore({str(self.path)!r}) is closed")
        return self._con

    def close(self) -> None:
        """Close the connection; idempotent."""
        with self._lock:
            if self._con is not None:
                self._con.close()
                self._con = None

    def __enter__(self) -> ResultsStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ResultsStore({str(self.path)!r})"

    # ------------------------------------------------------------------ keys and writes
    @staticmethod
    def key(config: Mapping) -> str:
        """The 16-hex-character key of ``config``: ``config_hash`` of its canonical JSON."""
        return config_hash(_config_dict(config))

    def has(self, key: str) -> bool:
        with self._lock:
            return self._db.execute("SELECT 1 FROM runs WHERE key = ?", (key,)).fetchone() is not None

    def get(self, key: str) -> RunRecord | None:
        with self._lock:
            row = self._db.execute(f"SELECT {', '.join(_BASE)} FROM runs WHERE key = ?", (key,)).fetchone()
        return None if row is None else _record(row)

    def put(self, config: Mapping, metrics: Mapping, *, study: str = "", wall_s: float = 0.0,
            nbytes: int | None = None, codec: str = "", version: str = "") -> str:
        """Store one run (replacing any run with the same config) in one transaction; return its key."""
        cfg = _config_dict(config)
        if not isinstance(metrics, Mapping):
            raise TypeError(f"metrics must be a mapping of name -> value, got {type(metrics).__name__}")
        for name, value in (("study", study), ("codec", codec), ("version", version)):
            if not isinstance(value, str):
                raise TypeError(f"{name} must be a string, got {value!r}")
        wall = check_positive_float("wall_s", wall_s, allow_zero=True)
        if nbytes is not None:
            nbytes = check_positive_int("nbytes", nbytes, minimum=0)
        cfg_text = canonical_json(cfg)
        key = config_hash(cfg)
        try:
            met_text = canonical_json(dict(metrics))  # NaN / Infinity allowed and round-trip
        except (TypeError, ValueError) as e:
            raise TypeError(f"metrics must be JSON-able (numbers, strings, lists, dicts): {e}") from None
        met = json.loads(met_text)
        promoted = [_sql_value(cfg.get(c)) for c in CONFIG_COLUMNS] + [
            _sql_value(met.get(c)) for c in METRIC_COLUMNS
        ]
        created = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
        cols = (*_BASE, *_PROMOTED)
        values = (key, study, cfg_text, met_text, wall, nbytes, codec, version, created, *promoted)
        update = ", ".join(f"{c} = excluded.{c}" for c in cols if c != "key")
        sql = (f"INSERT INTO runs ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))}) "
               f"ON CONFLICT (key) DO UPDATE SET {update}")
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                db.execute(sql, values)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        return key

    # ------------------------------------------------------------------ reads
    def missing(self, configs: Iterable[Mapping]) -> list[Mapping]:
        """The configs whose key is not stored yet, in their original order (duplicates kept)."""
        configs = list(configs)
        keys = [self.key(c) for c in configs]
        stored: set[str] = set()
        unique = sorted(set(keys))
        with self._lock:
            for i in range(0, len(unique), _CHUNK):
                chunk = unique[i:i + _CHUNK]
                rows = self._db.execute(f"SELECT key FROM runs WHERE key IN ({', '.join('?' * len(chunk))})",
                                        chunk).fetchall()
                stored.update(r[0] for r in rows)
        return [c for c, k in zip(configs, keys, strict=True) if k not in stored]

    def query(self, *, study: str | None = None, where: Mapping[str, Any] | None = None,
              limit: int | None = None) -> list[RunRecord]:
        """Stored runs in insertion order, filtered by ``study`` and ``where``.

        ``where`` maps a promoted column (``dataset``, ``ipc``, ``test_acc``, ...), ``key``, ``study``,
        ``codec``, ``version`` or ``config.<top-level key>`` to a value (equality), a list/tuple of values
        (IN) or ``None`` (IS NULL).
        """
        clauses, params = _where_sql(study, where)
        sql = f"SELECT {', '.join(_BASE)} FROM runs"
        if clauses:
            sql += " WHERE " + " AND ".join(clauses)
        sql += " ORDER BY rowid"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(check_positive_int("limit", limit, minimum=0))
        with self._lock:
            rows = self._db.execute(sql, params).fetchall()
        return [_record(r) for r in rows]

    def studies(self) -> list[str]:
        """The distinct study names, sorted."""
        with self._lock:
            return [r[0] for r in self._db.execute("SELECT DISTINCT study FROM runs ORDER BY study")]

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM runs").fetchone()[0])

    def __iter__(self) -> Iterator[RunRecord]:
        return iter(self.query())

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self.has(key)

    # ------------------------------------------------------------------ export
    def to_rows(self, records: Iterable[RunRecord] | None = None) -> list[dict[str, Any]]:
        """Flat dicts, all with the same keys: the promoted and bookkeeping columns, then ``config.*`` and
        ``metrics.*`` (nested dicts joined with ``.``, lists as JSON strings; absent values are ``None``)."""
        records = self.query() if records is None else list(records)
        flat = []
        cfg_cols: set[str] = set()
        met_cols: set[str] = set()
        for r in records:
            c, m = _flatten(r.config, "config."), _flatten(r.metrics, "metrics.")
            cfg_cols.update(c)
            met_cols.update(m)
            head = {"key": r.key, "study": r.study}
            head.update({col: _plain(r.config.get(col)) for col in CONFIG_COLUMNS})
            head.update({col: _plain(r.metrics.get(col)) for col in METRIC_COLUMNS})
            head.update(wall_s=r.wall_s, nbytes=r.nbytes, codec=r.codec, version=r.version, created=r.created)
            flat.append((head, c, m))
        columns = [*_ROW_HEAD, *sorted(cfg_cols), *sorted(met_cols)]
        rows = []
        for head, c, m in flat:
            merged = {**head, **c, **m}
            rows.append({col: merged.get(col) for col in columns})
        return rows

    def export_csv(self, path: str | Path, *, study: str | None = None,
                   where: Mapping[str, Any] | None = None) -> int:
        """Write the (filtered) runs as CSV, atomically; return the number of rows written."""
        rows = self.to_rows(self.query(study=study, where=where))
        columns = list(rows[0]) if rows else list(_ROW_HEAD)
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(path, buf.getvalue())
        return len(rows)

    def export_parquet(self, path: str | Path, *, study: str | None = None,
                       where: Mapping[str, Any] | None = None) -> int:
        """Write the (filtered) runs as Parquet (needs pyarrow), atomically; return the number of rows."""
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            raise ImportError(
                "export_parquet needs pyarrow, which is not installed. Install it with:\n"
                "    pip install 'softlabels[parquet]'\n"
                "or use export_csv instead."
            ) from None
        rows = self.to_rows(self.query(study=study, where=where))
        columns = list(rows[0]) if rows else list(_ROW_HEAD)
        arrays = {}
        for col in columns:
            values = [r[col] for r in rows]
            try:
                arrays[col] = pa.array(values)
            except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, OverflowError):
                # mixed types across runs (e.g. an int in one config, a string in another): store as JSON text
                arrays[col] = pa.array(
                    [None if v is None else json.dumps(v) for v in values], type=pa.string()
                )
            if pa.types.is_null(arrays[col].type) and col in _ROW_HEAD:
                arrays[col] = arrays[col].cast(_arrow_type(pa, col))
        sink = pa.BufferOutputStream()
        pq.write_table(pa.table(arrays), sink)
        atomic_write_bytes(path, sink.getvalue().to_pybytes())
        return len(rows)


# ---------------------------------------------------------------------- helpers
def _config_dict(config: Mapping) -> dict[str, Any]:
    """Validate ``config`` and return it as it will be stored (a JSON round trip of its canonical form)."""
    if not isinstance(config, Mapping):
        raise TypeError(f"config must be a mapping (dict), got {type(config).__name__}")
    try:
        text = canonical_json(dict(config))
    except (TypeError, ValueError) as e:
        raise TypeError(f"config must be JSON-able (str, numbers, bool, None, lists and dicts with string "
                        f"keys): {e}") from None

    def _reject(constant: str) -> None:
        raise ValueError(f"config contains {constant}; configs identify runs and must be finite numbers")

    return json.loads(text, parse_constant=_reject)


def _sql_value(v: Any) -> Any:
    """A promoted-column value: scalars as they are, lists and dicts as canonical JSON text."""
    if isinstance(v, (dict, list)):
        return canonical_json(v)
    if isinstance(v, float) and math.isnan(v):
        return None
    return v


def _plain(v: Any) -> Any:
    """A flat-row value: scalars as they are, lists and dicts as JSON text."""
    return json.dumps(v) if isinstance(v, (dict, list)) else v


def _flatten(d: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        name = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(_flatten(v, name + "."))
        else:
            out[name] = _plain(v)
    return out


def _record(row: tuple) -> RunRecord:
    key, study, cfg, met, wall_s, nbytes, codec, version, created = row
    return RunRecord(key=key, study=study, config=json.loads(cfg), metrics=json.loads(met),
                     wall_s=float(wall_s) if wall_s is not None else math.nan, nbytes=nbytes,
                     codec=codec or "", version=version or "", created=created)


def _where_sql(study: str | None, where: Mapping[str, Any] | None) -> tuple[list[str], list[Any]]:
    clauses: list[str] = []
    params: list[Any] = []
    items = list((where or {}).items())
    if study is not None:
        items.insert(0, ("study", study))
    for name, value in items:
        if not isinstance(name, str):
            raise ValueError(f"filter names must be strings, got {name!r}")
        if name in _FILTERABLE:
            expr = name
        elif name.startswith("config.") and len(name) > len("config.") and '"' not in name:
            expr = "json_extract(config, ?)"
            params.append(f'$."{name[len("config."):]}"')
        else:
            raise ValueError(f"unknown filter {name!r}; valid filters are {', '.join(_FILTERABLE)} and "
                             "'config.<key>' for any top-level config key")
        if value is None:
            clauses.append(f"{expr} IS NULL")
        elif isinstance(value, (list, tuple, set, frozenset)):
            vals = [_filter_value(v) for v in value]
            if any(v is None for v in vals):
                raise ValueError(f"filter {name!r}: None is not allowed inside a list; filter on None alone")
            clauses.append(f"{expr} IN ({', '.join('?' * len(vals))})")
            params.extend(vals)
        else:
            clauses.append(f"{expr} = ?")
            params.append(_filter_value(value))
    return clauses, params


def _filter_value(v: Any) -> Any:
    return canonical_json(v) if isinstance(v, (dict, list)) else v


def _arrow_type(pa: Any, col: str) -> Any:
    types = {**CONFIG_COLUMNS, **METRIC_COLUMNS, "wall_s": "REAL", "nbytes": "INTEGER"}
    return {"TEXT": pa.string(), "INTEGER": pa.int64(), "REAL": pa.float64()}[types.get(col, "TEXT")]

"""Spec strings: the one grammar that names a parametrised thing (codecs, label transforms, losses,
selections, set treatments)::

    spec   := NAME [":" param ("," param)*]
    param  := KEY "=" VALUE

Whitespace around tokens is ignored; keys appear at most once, in any order; omitted keys take their
defaults. The canonical form writes every parameter, in declaration order (floats with ``repr``, booleans
as 0/1), so two specs that mean the same thing are the same string: canonical specs go into run keys.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from .registry import Registry

__all__ = [
    "REQUIRED",
    "Param",
    "Parsed",
    "SpecDef",
    "SpecRegistry",
    "format_spec",
    "parse_params",
    "split_spec",
]

T = TypeVar("T")
REQUIRED: Any = object()
KINDS = ("int", "float", "bool", "choice", "str")


@dataclass(frozen=True, kw_only=True)
class Param:
    """One parameter: ``kind`` is int, float, bool (written 0/1), choice (one of ``choices``) or str.

    ``check`` returns whether a parsed value is allowed; ``allowed`` describes the allowed values in errors.
    """

    key: str
    kind: str = "int"
    default: Any = REQUIRED
    choices: tuple[str, ...] = ()
    check: Callable[[Any], bool] | None = None
    allowed: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"Param kind must be one of {KINDS}, got {self.kind!r}")

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    def describe(self) -> str:
        if self.allowed:
            return self.allowed
        return {"int": "an integer", "float": "a number", "bool": "0 or 1", "str": "a string",
                "choice": "one of " + ", ".join(self.choices)}[self.kind]

    def parse(self, owner: str, text: str) -> Any:
        err = ValueError(f"{owner}: parameter {self.key} must be {self.describe()}, got {text!r}")
        value: Any
        if self.kind == "bool":
            if text not in ("0", "1"):
                raise err
            value = text == "1"
        elif self.kind == "choice":
            if text not in self.choices:
                raise err
            value = text
        elif self.kind == "str":
            value = text
        else:
            try:
                value = int(text) if self.kind == "int" else float(text)
            except ValueError:
                raise err from None
            if self.kind == "float" and not math.isfinite(value):
                raise err
        if self.check is not None and not self.check(value):
            raise err
        return value

    def format(self, value: Any) -> str:
        if self.kind == "bool":
            return "1" if value else "0"
        if self.kind == "int":
            return str(int(value))
        if self.kind == "float":
            return repr(float(value))
        return str(value)


def split_spec(spec: object, kind: str) -> tuple[str, dict[str, str]]:
    """``"name:k=v,k2=v2"`` -> ``("name", {"k": "v", "k2": "v2"})`` (unparsed values)."""
    if not isinstance(spec, str):
        raise TypeError(
            f"{kind} spec must be a string like 'name' or 'name:key=value', got {type(spec).__name__}"
        )
    name, sep, rest = spec.strip().partition(":")
    name = name.strip()
    if not name:
        raise ValueError(f"empty {kind} name in spec {spec!r}; write NAME or NAME:key=value,...")
    params: dict[str, str] = {}
    if sep:
        if not rest.strip():
            raise ValueError(f"{kind} spec {spec!r} has ':' but no parameters; drop the ':' or add key=value")
        for item in rest.split(","):
            key, eq, value = (s.strip() for s in item.partition("="))
            if not eq or not key or not value:
                raise ValueError(
                    f"malformed parameter {item.strip()!r} in {kind} spec {spec!r}; write key=value"
                )
            if key in params:
                raise ValueError(f"parameter {key!r} is given twice in {kind} spec {spec!r}")
            params[key] = value
    return name, params


def parse_params(owner: str, params: Sequence[Param], raw: Mapping[str, str], *, kind: str) -> dict[str, Any]:
    """Typed values for every parameter of ``owner``: parsed from ``raw`` or defaulted."""
    known = {p.key: p for p in params}
    for key in raw:
        if key not in known:
            if not known:
                raise ValueError(f"{kind} {owner!r} takes no parameters, got {key!r}")
            close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.5)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"unknown parameter {key!r} for {kind} {owner!r}.{hint} "
                             f"Valid parameters: {', '.join(known)}")
    values: dict[str, Any] = {}
    missing = []
    for p in params:
        if p.key in raw:
            values[p.key] = p.parse(owner, raw[p.key])
        elif p.required:
            missing.append(p.key)
        else:
            values[p.key] = p.default
    if missing:
        example = ",".join(f"{k}=..." for k in missing)
        raise ValueError(
            f"{kind} {owner!r} needs parameter(s) {', '.join(missing)}; write e.g. '{owner}:{example}'"
        )
    return values


def format_spec(name: str, params: Sequence[Param], values: Mapping[str, Any]) -> str:
    """The canonical spec: every parameter written out in declaration order."""
    if not params:
        return name
    return f"{name}:" + ",".join(f"{p.key}={p.format(values[p.key])}" for p in params)


@dataclass(frozen=True, kw_only=True)
class SpecDef(Generic[T]):
    """A registered name: its parameters and a builder from their values to the object it names."""

    name: str
    params: tuple[Param, ...]
    build: Callable[..., T]
    help: str = ""


@dataclass(frozen=True)
class Parsed:
    """What :meth:`SpecRegistry.parse` returns: the built object, the canonical spec, name and values."""

    obj: Any
    spec: str
    name: str
    values: dict[str, Any]


class SpecRegistry(Registry[SpecDef]):
    """A :class:`~softlabels.registry.Registry` of parametrised names, each parsed from a spec string."""

    def define(
        self, name: str, *params: Param, help: str = ""
    ) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorator: register ``build(**values)`` under ``name`` with ``params``."""

        def deco(build: Callable[..., T]) -> Callable[..., T]:
            doc = help or (build.__doc__ or "").strip().split("\n")[0]
            self.register(name, SpecDef(name=name, params=tuple(params), build=build, help=doc), help=doc)
            return build

        return deco

    def parse(self, spec: object) -> Parsed:
        name, raw = split_spec(spec, self.kind)
        d = self.get(name)
        values = parse_params(name, d.params, raw, kind=self.kind)
        return Parsed(d.build(**values), format_spec(name, d.params, values), name, values)

    def canonical(self, spec: object) -> str:
        """The canonical form of ``spec`` (checked, nothing built)."""
        name, raw = split_spec(spec, self.kind)
        d = self.get(name)
        return format_spec(name, d.params, parse_params(name, d.params, raw, kind=self.kind))

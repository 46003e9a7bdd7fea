"""Declaring a setting once: its key, type, default, help, choices and check, as dataclass field metadata.

A section of settings is a frozen dataclass whose fields are made with :func:`option`. Everything else
is derived from that one declaration: the kebab-case key (``local_epochs`` -> ``local-epochs``), the
coercion of raw values (TOML, Flower's ``run_config``, command-line text) from the field's annotation,
the field's own check, the ``fedmodel simulate``/``fedmodel train`` options
(:mod:`fedmodel.cli.options`), the app's defaults in ``pyproject.toml`` and the options reference
(:mod:`fedmodel.config.reference`).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

RunKeyRule = Literal["allowed", "simulation-only", "testing-aid"]
"""How a deployed node treats a run-config key (:data:`fedmodel.config.DEPLOYED_RUN_KEYS`)."""
ALLOWED: RunKeyRule = "allowed"
SIMULATION_ONLY: RunKeyRule = "simulation-only"
TESTING_AID: RunKeyRule = "testing-aid"

SIMULATE, TRAIN = "simulate", "train"
BOTH: tuple[str, ...] = (SIMULATE, TRAIN)
"""The commands a run option is offered on, by default."""


@dataclass(frozen=True)
class Option:
    """What a field declares besides its name, type and default (see :func:`option`)."""

    help: str
    choices: tuple[str, ...] = ()
    check: Callable[[Any], bool] | None = None
    expected: str = ""
    deployed: RunKeyRule = ALLOWED
    commands: tuple[str, ...] = BOTH
    shown: str | None = None
    parse: Callable[[Any], Any] | None = None
    path: bool = False
    hidden: bool = False


def option(default: Any, *, help: str, choices: tuple[str, ...] = (), check: Callable[[Any], bool] | None = None,
           expected: str = "", deployed: RunKeyRule = ALLOWED, commands: tuple[str, ...] = BOTH,
           shown: str | None = None, parse: Callable[[Any], Any] | None = None, path: bool = False,
           hidden: bool = False) -> Any:
    """A dataclass field that declares one setting.

    Parameters
    ----------
    default
        The value when nobody sets it (also the app's ``[tool.flwr.app.config]`` default).
    help
        One sentence for ``--help`` and the options reference; no default in it (it is shown from ``default``).
    choices
        The values allowed; a value outside is reported as ``KEY = VALUE: expected A | B | C``.
    check, expected
        ``check(value)`` false reports ``KEY = VALUE: expected EXPECTED``.
    deployed
        How a deployed node treats the key when a coordinator sends it: ``allowed``, ``simulation-only`` or
        ``testing-aid`` (both refused unless at their default).
    commands
        The commands that offer it as ``--KEY`` (``simulate``, ``train``); ``()`` for none.
    shown
        How ``--help`` and the reference show the default, when the value alone says little ("" = none).
    parse
        Turns a raw value into the field's value where the annotation alone does not say how.
    path
        A file or folder: the command line takes a path and makes it absolute.
    hidden
        Left out of ``--help`` (testing aids).
    """
    meta = Option(help=help, choices=choices, check=check, expected=expected, deployed=deployed, commands=commands,
                  shown=shown, parse=parse, path=path, hidden=hidden)
    return field(default=default, metadata={"option": meta})


def described(meta: Option) -> str:
    """The help, with the choices named after it unless it names each already."""
    if meta.choices and not all(c in meta.help for c in meta.choices):
        return f"{meta.help}: {' | '.join(meta.choices)}"
    return meta.help


def key_of(name: str) -> str:
    """The kebab-case key of a field name (``local_epochs`` -> ``local-epochs``)."""
    return name.replace("_", "-")


def declared(cls: type) -> Iterator[tuple[dataclasses.Field[Any], Option]]:
    """The fields of a section (or of a class made of sections) that declare an option, in order."""
    for f in dataclasses.fields(cls):
        meta = f.metadata.get("option")
        if isinstance(meta, Option):
            yield f, meta


def own_fields(section: type) -> tuple[str, ...]:
    """The names of the fields a section declares itself (not those of its bases)."""
    inherited = {f.name for base in section.__bases__ if dataclasses.is_dataclass(base)
                 for f in dataclasses.fields(base)}
    return tuple(f.name for f in dataclasses.fields(section) if f.name not in inherited)


@functools.cache
def field_types(cls: type) -> dict[str, Any]:
    """The resolved annotation of every field of ``cls``."""
    return typing.get_type_hints(cls)


def field_problems(obj: object, section: type, *, only: tuple[str, ...] | None = None,
                   skip: tuple[str, ...] = ()) -> list[str]:
    """The choices and checks a section's own fields declare, failed by ``obj``'s values."""
    names = own_fields(section)
    problems: list[str] = []
    for f, meta in declared(section):
        if f.name not in names or f.name in skip or (only is not None and f.name not in only):
            continue
        value = getattr(obj, f.name)
        if meta.choices and value not in meta.choices:
            problems.append(f"{key_of(f.name)} = {value!r}: expected {' | '.join(meta.choices)}")
        elif meta.check is not None and not meta.check(value):
            problems.append(f"{key_of(f.name)} = {value!r}: expected {meta.expected}")
    return problems


def coerce(tp: Any, raw: Any, meta: Option | None = None) -> Any:
    """Turn a raw value (TOML, Flower run_config, CLI text) into a value of type ``tp``, or raise ValueError."""
    if meta is not None and meta.parse is not None:
        return meta.parse(raw)
    if tp is bool:
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, str) and raw.lower() in ("true", "false"):
            return raw.lower() == "true"
        raise ValueError("expected true or false")
    if tp is int:
        if isinstance(raw, bool) or not isinstance(raw, (int, float, str)):
            raise ValueError("expected an integer")
        try:
            value = float(raw) if isinstance(raw, str) else raw
        except ValueError:
            raise ValueError("expected an integer") from None
        if not float(value).is_integer():
            raise ValueError("expected an integer")
        return int(value)
    if tp is float:
        if isinstance(raw, bool):
            raise ValueError("expected a number")
        try:
            return float(raw)
        except (TypeError, ValueError):
            raise ValueError("expected a number") from None
    if tp is str:
        if not isinstance(raw, str):
            raise ValueError("expected a string")
        return raw.strip()
    if typing.get_origin(tp) is tuple:
        return _coerce_items(typing.get_args(tp)[0], raw)
    parse = getattr(tp, "parse", None)
    if isinstance(tp, type) and callable(parse):  # PartitionSpec, AggregationSpec: "kind:arg" text
        return raw if isinstance(raw, tp) else parse(str(raw))
    raise TypeError(f"no coercion to {tp!r}: declare parse= on the option")  # pragma: no cover - a declaration bug


def _coerce_items(item: Any, raw: Any) -> tuple[Any, ...]:
    """A comma-separated text (or a TOML array) as a tuple of ``item``."""
    if item is str:
        texts = [str(x) for x in raw] if isinstance(raw, (list, tuple)) else str(raw).split(",")
        return tuple(x.strip() for x in texts if x.strip())
    if isinstance(raw, (list, tuple)):
        items: list[Any] = list(raw)
    else:
        items = [x for x in str(raw).split(",") if x.strip()]
    if item is int:  # every integer list is of owner ids
        try:
            return tuple(int(str(x)) for x in items)
        except ValueError:
            raise ValueError("expected comma-separated owner ids") from None
    return tuple(x if isinstance(x, item) else item.parse(str(x)) for x in items)  # Fault


def to_raw(value: Any) -> Any:
    """A field's value as a scalar of the wire format (run_config, TOML): specs and lists as text."""
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    if isinstance(value, (str, bool, int, float)) or value is None:
        return value
    return str(value)


def shown_default(f: dataclasses.Field[Any], meta: Option) -> str:
    """The default as ``--help`` and the reference show it ("" for none worth showing)."""
    if meta.shown is not None:
        return meta.shown
    value = to_raw(f.default)
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value == "" else str(value)


def optional_of(tp: Any) -> Any:
    """``X`` of ``X | None``; ``tp`` itself otherwise."""
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def finite(x: object) -> bool:
    """A finite int or float."""
    return isinstance(x, (int, float)) and math.isfinite(x)

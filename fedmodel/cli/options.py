"""Command-line options of ``fedmodel simulate`` and ``fedmodel train``, derived from the settings' declaration.

Every run setting is declared once (:mod:`fedmodel.config.sections`); :func:`run_options` turns those
offered on a command into its typer options: ``--KEY`` (``None`` when not given, so a ``--config``
file's value stands), a flag for a setting that is false by default, text for lists and specs, and a
path made absolute for a file or folder. The options below are the few that are not one run setting
each; each says why.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import click
import typer
from click.core import ParameterSource

from fedmodel.config import RunConfig
from fedmodel.config.declare import Option, declared, described, field_types, key_of, optional_of, to_raw

F = TypeVar("F", bound=Callable[..., Any])



def help_of(name: str) -> str:
    """The declared help of run setting ``name``, for a command that offers it outside :func:`run_options`."""
    return next(meta.help for f, meta in declared(RunConfig) if f.name == name)


Label = Annotated[str | None, typer.Option(help=help_of("label"))]  # fedmodel data check|clean: not a run
# Not run settings: where the settings come from, and how the result is shown.
ConfigFile = Annotated[Path | None, typer.Option("--config", help="TOML file of the same keys (options win)")]
Format = Annotated[str, typer.Option("--format", help="table | json")]
# The id-columns setting is a comma-separated list; the command line takes one column per --id-column.
IdColumn = Annotated[list[str] | None, typer.Option(
    "--id-column", help="Identifier column: never a feature, never sent (repeat for several)")]
# The resume setting is a flag in the run's config; the command line names the run folder to resume.
Resume = Annotated[Path | None, typer.Option(
    "--resume", help="Continue the run in RUN_DIR from its newest checkpoint, with its own config.toml",
    metavar="RUN_DIR")]
TEXT_LR = 5e-4
"""The learning rate of a text run when --lr is not given: AdamW on LoRA adapters (tables: SGD, 2.0)."""


def run_options(command: str) -> Callable[[F], F]:
    """Give ``command``'s function a typer option for every run setting offered on it.

    The decorated function takes the options given as its first argument, a mapping of config keys
    to raw values (only those given on the command line), and declares its own other options.
    """
    fields = [(f, meta) for f, meta in declared(RunConfig) if command in meta.commands]
    types = field_types(RunConfig)

    def decorate(func: F) -> F:
        own = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY)
               for p in list(inspect.signature(func, eval_str=True).parameters.values())[1:]]
        made = [_parameter(f.name, types[f.name], f, meta) for f, meta in fields]

        @functools.wraps(func)
        def wrapper(**kwargs: Any) -> Any:
            source = click.get_current_context().get_parameter_source
            given: dict[str, Any] = {}
            for f, _meta in fields:
                name = _name(f)
                value = kwargs.pop(name)
                if source(name) != ParameterSource.COMMANDLINE:  # not given: a --config file's value stands
                    continue
                if isinstance(value, Path):
                    value = str(value.expanduser().absolute())
                given[key_of(f.name)] = False if name != f.name else value  # --no-KEY turns a setting off
            return func(given, **kwargs)

        params = [p for p in own if p.default is p.empty] + made + [p for p in own if p.default is not p.empty]
        wrapper.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]  # typer reads it
        wrapper.__annotations__ = {p.name: p.annotation for p in params}
        return wrapper  # type: ignore[return-value]  # the same call, with more keyword options

    return decorate


def _parameter(name: str, tp: Any, f: dataclasses.Field[Any], meta: Option) -> inspect.Parameter:
    """The typer option of one run setting; typer shows its default (or the declared words for it)."""
    kind = optional_of(tp)
    shown: str | bool = meta.shown if meta.shown is not None else True
    if kind is bool:  # a flag: --KEY turns on a setting false by default, --no-KEY turns off one true by default
        flag = f"--{key_of(_name(f))}"
        annotation: Any = Annotated[bool, typer.Option(flag, help=described(meta), hidden=meta.hidden)]
        return inspect.Parameter(_name(f), inspect.Parameter.KEYWORD_ONLY, default=False, annotation=annotation)
    default = to_raw(f.default)
    value_type: Any = Path if meta.path else kind if kind in (int, float, str) else str
    option = typer.Option(f"--{key_of(name)}", help=described(meta), hidden=meta.hidden, show_default=shown)
    annotation = Annotated[value_type | None, option]
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None if default == "" else default,
                             annotation=annotation)


def _name(f: dataclasses.Field[Any]) -> str:
    """The command's parameter of a setting: ``no_KEY`` for a setting true by default, else its name."""
    return f"no_{f.name}" if f.default is True else f.name


def id_columns(values: list[str] | None) -> dict[str, str]:
    """Repeated --id-column options as the config's comma-separated value (nothing when none is given)."""
    return {"id-columns": ",".join(values)} if values else {}

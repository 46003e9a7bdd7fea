"""``fedmodel data check`` describes a shard at its owner (no values shown); ``fedmodel data clean`` cleans it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from fedmodel.cli import options as opt
from fedmodel.cli.console import fail, out
from fedmodel.data.cleaning import (
    CleaningSpec,
    CleaningSummary,
    clean,
    load_or_create_hmac_key,
    read_raw_table,
    write_clean_table,
)
from fedmodel.data.quality import QualityReport, check_shard
from fedmodel.data.schema_file import load_schema_file
from fedmodel.errors import ConfigError, FedModelError

EXIT_MAY_TRAIN, EXIT_MAY_NOT_TRAIN = 0, 1

data_app = typer.Typer(
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
    help="Check a data owner's shard before training (counts only: no value leaves the owner).",
)


@data_app.command("check")
def check(
    path: Annotated[Path, typer.Argument(help="A .csv, .parquet or .npz shard")],
    label: opt.Label = None,
    schema: Annotated[Path | None, typer.Option(help="TOML schema file: columns, label, labels, id_columns, ranges")] = None,
    iqr_k: Annotated[float, typer.Option("--iqr-k", help="IQR outlier rule: beyond K interquartile ranges")] = 1.5,
    z: Annotated[float, typer.Option("--z", help="z-score outlier threshold")] = 3.0,
    output_format: opt.Format = "table",
) -> None:
    """Rows, types, missing values, duplicates, outliers and class balance; exit 0 may train, 1 not, 2 unusable."""
    try:
        if output_format not in ("table", "json"):
            raise ConfigError([f"--format {output_format!r}: expected table | json"])
        shard_schema = load_schema_file(schema) if schema is not None else None
        report = check_shard(path, label=label, schema=shard_schema, iqr_k=iqr_k, z=z)
    except FedModelError as exc:
        fail(exc, exc.exit_code)
    if output_format == "json":
        typer.echo(json.dumps(report.to_dict(), indent=2))  # plain: rich's JSON highlighting is slow on wide files
    else:
        print_report(report)
    raise typer.Exit(EXIT_MAY_TRAIN if report.may_train else EXIT_MAY_NOT_TRAIN)


def print_report(report: QualityReport) -> None:
    """The summary, per-column, class-balance and verdict tables."""
    for table in (_summary(report), _columns(report), _classes(report), _verdict(report)):
        out.print(table)


def _summary(report: QualityReport) -> Table:
    table = Table(title=f"fedmodel data check: {escape(report.path)}", show_header=False)
    table.add_column("what")
    table.add_column("value")
    rows = [
        ("format", report.file_format), ("rows", str(report.num_rows)), ("columns", str(len(report.columns))),
        ("label column", escape(report.label)), ("duplicate rows", str(report.duplicate_rows)),
        ("blank lines", str(report.blank_lines)),
        ("identifier columns", escape(", ".join(report.id_columns)) or "-"),
        ("outlier rules", f"IQR k = {report.iqr_k:g}; |z| > {report.z:g}"),
        ("row numbers", "0-based index" if report.zero_based_rows else "line of the file"),
    ]
    for what, value in rows:
        table.add_row(what, value)
    return table


def _columns(report: QualityReport) -> Table:
    heads = ("column", "role", "type", "miss", "text", "inf", "uniq", "const", "iqr", "z", "range")
    caption = ("miss: missing values; text: values that are not numbers; inf: infinite; uniq: distinct values; "
               "iqr, z: outliers by each rule; range: outside the schema range")
    table = Table(title="columns", caption=caption)
    for i, head in enumerate(heads):
        table.add_column(head, justify="left" if i < 3 else "right", no_wrap=0 < i < 3)
    for c in report.columns:
        table.add_row(escape(c.name), c.role, c.inferred_type, str(c.missing), str(c.not_numbers),
                      str(c.non_finite), str(c.distinct), "yes" if c.constant else "",
                      str(c.outliers_iqr), str(c.outliers_z), str(c.out_of_range))
    return table


def _classes(report: QualityReport) -> Table:
    table = Table(title="class balance")
    table.add_column("label")
    table.add_column("rows", justify="right")
    table.add_column("share", justify="right")
    if report.class_counts is None:
        table.add_row("(too many distinct values to list)", "", "")
        return table
    for value, count in report.class_counts:
        table.add_row(escape(value), str(count), f"{count / max(report.num_rows, 1):.1%}")
    if report.labels_outside_schema:
        table.add_row("(outside the schema)", str(report.labels_outside_schema), "")
    if report.missing_labels:
        table.add_row("(missing)", str(report.missing_labels), "")
    return table


def _verdict(report: QualityReport) -> Table:
    verdict = "[bold green]may train[/]" if report.may_train else "[bold red]may not train[/]"
    table = Table(title="verdict", show_header=False)
    table.add_column("kind")
    table.add_column("detail")
    table.add_row("verdict", verdict)
    for reason in report.reasons:
        table.add_row("[red]reason[/]", escape(reason))
    for warning in report.warnings:
        table.add_row("[yellow]warning[/]", escape(warning))
    return table


@data_app.command("clean")
def clean_shard(
    path: Annotated[Path, typer.Argument(help="A .csv, .parquet or .npz shard (never changed)")],
    out_path: Annotated[Path, typer.Option("--out", help="The cleaned CSV file to write")],
    label: opt.Label = None,
    schema: Annotated[Path | None, typer.Option(help="TOML schema file: its label and identifier columns")] = None,
    missing: Annotated[str, typer.Option(help="error | drop | mean | median | mode")] = "error",
    duplicates: Annotated[str, typer.Option(help="keep | drop exact duplicate rows")] = "keep",
    outliers: Annotated[str, typer.Option(help="keep | clip | drop values beyond the IQR fences")] = "keep",
    outlier_k: Annotated[float, typer.Option("--outlier-k", help="IQR fences: K interquartile ranges")] = 3.0,
    scaling: Annotated[str, typer.Option(help="none | zscore | minmax")] = "none",
    id_column: Annotated[list[str] | None, typer.Option(
        "--id-column", help="An identifier column (repeatable), besides the schema file's")] = None,
    ids: Annotated[str, typer.Option(help="drop | hash (HMAC-SHA256 under --key-file) identifier columns")] = "drop",
    key_file: Annotated[Path | None, typer.Option(
        help="Secret key for --ids hash (made, mode 0600, if absent)")] = None,
    output_format: opt.Format = "table",
) -> None:
    """Drop or hash identifiers, fix missing values, duplicates, outliers, scale; write a CSV (exit 0; 2 unusable)."""
    try:
        shard_schema = load_schema_file(schema) if schema is not None else None
        declared = shard_schema.id_columns if shard_schema is not None else ()
        spec = CleaningSpec(missing, duplicates, outliers, outlier_k, scaling,  # type: ignore[arg-type]  # typer passes the options' checked choices as str
                            tuple(dict.fromkeys([*declared, *(id_column or [])])), ids)  # type: ignore[arg-type]  # typer passes the options' checked choices as str
        _check_clean_options(spec, path, out_path, key_file, output_format)
        label = _clean_label(label, shard_schema.label if shard_schema is not None else "")
        table = read_raw_table(path, label or "", spec.id_columns)
        key = load_or_create_hmac_key(key_file) if spec.ids == "hash" and key_file is not None else None
        result = clean(table, spec, hmac_key=key)
        write_clean_table(result, table.feature_names, label or "y", out_path)
    except FedModelError as exc:
        fail(exc, exc.exit_code)
    if output_format == "json":
        typer.echo(json.dumps(result.summary.to_dict(), indent=2))
    else:
        out.print(_clean_summary(result.summary, path, out_path))


def _check_clean_options(spec: CleaningSpec, path: Path, out_path: Path, key_file: Path | None,
                         output_format: str) -> None:
    """ConfigError listing every bad option: the spec's values, the output file, the key file, the format."""
    problems: list[str] = []
    try:
        spec.validate()
    except ConfigError as exc:
        problems += [f"--{p}" for p in exc.problems]
    if output_format not in ("table", "json"):
        problems.append(f"--format {output_format!r}: expected table | json")
    if out_path.suffix.lower() != ".csv":
        problems.append(f"--out {out_path}: expected a .csv file")
    for other, what in ((path, "the input file"), (key_file, "the key file")):
        if other is not None and out_path.resolve() == other.resolve():
            problems.append(f"--out {out_path}: is {what}; expected another file (the input is never overwritten)")
    if spec.ids == "hash" and key_file is None:
        problems.append("--ids hash: needs --key-file, the owner's secret key (created if absent)")
    if problems:
        raise ConfigError(problems)


def _clean_label(label: str | None, declared: str) -> str | None:
    if label and declared and label != declared:
        raise ConfigError([f"--label {label!r}, but the schema file says label = {declared!r}"])
    return label or declared or None


def _clean_summary(summary: CleaningSummary, path: Path, out_path: Path) -> Table:
    table = Table(title=f"fedmodel data clean: {escape(str(path))} -> {escape(str(out_path))}", show_header=False)
    table.add_column("what")
    table.add_column("count", justify="right")
    for what, value in summary.to_dict().items():
        table.add_row(what.replace("_", " "), str(value))
    return table

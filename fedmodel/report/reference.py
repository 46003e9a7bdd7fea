"""The report.json reference page, generated from the report types (:mod:`fedmodel.report.model`).

``python -m fedmodel.report.reference > docs/reference/report.md`` writes it; a test fails when the
committed page and the types drift apart. Each section is one dataclass: its docstring, then each
field as ``report.json`` names it, with its type and the comment the declaration carries.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import sys
import typing

from fedmodel.report import model

_FIELD = re.compile(r"^\s{4}(\w+): [^#]*?(?:#\s*(.*))?$")
_CLASS = re.compile(r"\b([A-Z][A-Za-z]+)\b")


def _comments(cls: type) -> dict[str, str]:
    """Each field's trailing ``# comment`` in the class's source (the only place the declaration says it)."""
    found: dict[str, str] = {}
    for line in inspect.getsource(cls).splitlines():
        match = _FIELD.match(line)
        if match and match.group(1) in {f.name for f in dataclasses.fields(cls)}:
            found[match.group(1)] = (match.group(2) or "").strip()
    return found


def _sections() -> list[type]:
    """The report's dataclasses, from :class:`~fedmodel.report.model.Report` down, each once, in reading order."""
    order: list[type] = []
    pending: list[type] = [model.Report]
    while pending:
        cls = pending.pop(0)
        if cls in order:
            continue
        order.append(cls)
        for f in dataclasses.fields(cls):
            for name in _CLASS.findall(str(f.type)):
                nested = getattr(model, name, None)
                if isinstance(nested, type) and dataclasses.is_dataclass(nested) and nested not in order:
                    pending.append(nested)
    return order


def _type_name(hint: object) -> str:
    """A field's type as the page shows it: ``list[Round] or null``."""
    text = hint.__name__ if isinstance(hint, type) else str(hint)
    text = text.replace("typing.", "").replace("fedmodel.report.model.", "").replace("fedmodel.owners.", "")
    return text.replace(" | ", " or ").replace("None", "null")


def markdown() -> str:
    """The whole reference page, as Markdown."""
    lines = [
        "# report.json",
        "",
        "Generated from the report types (`fedmodel/report/model.py`) by "
        "`python -m fedmodel.report.reference`; do not edit by hand.",
        "",
        "Every run folder holds `report.json`, written from these types. Keys appear in this order; a key",
        "noted *optional* is written only when the run has it. `null` stands for a value a run does not",
        "have (or a NaN).",
        "",
    ]
    for cls in _sections():
        doc = inspect.cleandoc(cls.__doc__ or "").split("\n\n")[0].replace("\n", " ")
        lines += [f"## {cls.__name__}", "", doc, "", "| key | type | notes |", "|---|---|---|"]
        notes = _comments(cls)
        hints = typing.get_type_hints(cls, vars(model))
        for f in dataclasses.fields(cls):
            if f.name == "extra":
                continue
            shown = _type_name(hints.get(f.name, f.type))
            lines.append(f"| `{f.name}` | `{shown}` | {notes.get(f.name, '')} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.stdout.write(markdown())

"""docs/reference/report.md is generated from the report types and kept in step with them."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from fedmodel.report import model
from fedmodel.report.reference import markdown

PAGE = Path(__file__).resolve().parents[3] / "docs" / "reference" / "report.md"


def test_the_committed_report_reference_is_generated_from_the_types() -> None:
    assert PAGE.read_text(encoding="utf-8") == markdown(), (
        "docs/reference/report.md is stale: run python -m fedmodel.report.reference > docs/reference/report.md")


def test_every_key_report_json_can_hold_is_on_the_page() -> None:
    page = markdown()
    for cls in (model.Report, model.Round, model.OwnerResult, model.Privacy, model.OwnerPrivacy, model.Timing):
        section = page.split(f"## {cls.__name__}\n", 1)[1].split("\n## ", 1)[0]
        for f in dataclasses.fields(cls):
            if f.name != "extra":
                assert f"| `{f.name}` |" in section, f"{cls.__name__}.{f.name}"

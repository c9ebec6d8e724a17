"""The documentation's settings tables against the settings classes.

README.md's Settings table and docs/contract.md's Configuration table are written by hand; these
tests keep them whole: every ``LB_`` variable of every settings class has its row (in the README,
with its keyword and class, in the classes' order), each default shown is the class's default,
and every ``LB_`` name the pages mention is a setting (or one of the examples of what is not).
"""

from __future__ import annotations

import dataclasses
import pathlib
import re
from typing import Any

import pytest

import lbmiddleware  # noqa: F401  (registers every settings class)
from lbmiddleware.core.settings import BaseSettings, registered

ROOT = pathlib.Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
CONTRACT = ROOT / "docs" / "contract.md"
DOCS_INDEX = ROOT / "docs" / "README.md"

# LB_ names the pages show on purpose that are no setting: a typo the warning catches, and the
# variables Kubernetes writes for a Service named lb.
NOT_SETTINGS = {"LB_PREFX", "LB_SERVICE_HOST", "LB_SERVICE_PORT", "LB_PORT_8000_TCP"}


def settings_fields() -> list[tuple[type[BaseSettings], dataclasses.Field[Any]]]:
    return [(cls, field) for cls in registered() for field in dataclasses.fields(cls)
            if "env" in field.metadata]


def table(path: pathlib.Path, header: str) -> list[list[str]]:
    """The rows of the Markdown table that starts with ``header``, as lists of cells."""
    lines = path.read_text(encoding="utf-8").splitlines()
    start = lines.index(header)
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip().strip("|").split(" | ")])
    return rows


def unquote(cell: str) -> str:
    return cell.strip().strip("`")


def same_default(cls: type[BaseSettings], field: dataclasses.Field[Any], shown: str) -> bool:
    """Whether ``shown`` (a table's default cell) says what ``field``'s default is."""
    if shown == "(required)":
        return field.name in cls.required
    cast = field.metadata["cast"]
    text = "" if shown in ("(none)", "(off)") else unquote(shown.split(" (")[0])
    return bool(cast(text) == cast(field.default))


def test_the_readme_settings_table_has_every_setting_in_order() -> None:
    rows = table(README, "| variable | keyword | object | default | meaning |")
    shown = [(unquote(r[0]), unquote(r[1]), unquote(r[2])) for r in rows]
    expected = [(f.metadata["env"], f.name, cls.__name__) for cls, f in settings_fields()]
    assert shown == expected


@pytest.mark.parametrize("cls, field", settings_fields(),
                         ids=[f.metadata["env"] for _, f in settings_fields()])
def test_each_readme_default_is_the_settings_default(cls: type[BaseSettings],
                                                     field: dataclasses.Field[Any]) -> None:
    rows = {unquote(r[0]): r for r in table(
        README, "| variable | keyword | object | default | meaning |")}
    assert same_default(cls, field, rows[field.metadata["env"]][3])


def test_the_readme_backends_row_names_the_entry_syntax() -> None:
    rows = {unquote(r[0]): r[4] for r in table(
        README, "| variable | keyword | object | default | meaning |")}
    meaning = rows["LB_BACKENDS"]
    for word in ("weight=N", "priority=N", "backup", "dns+http://", "srv+http://", "etcd://"):
        assert word in meaning


@pytest.mark.parametrize("cls, field", settings_fields(),
                         ids=[f.metadata["env"] for _, f in settings_fields()])
def test_the_contract_configuration_table_has_every_setting(
        cls: type[BaseSettings], field: dataclasses.Field[Any]) -> None:
    rows = {unquote(r[0]): r for r in table(CONTRACT, "| variable | default | read by |")}
    row = rows[field.metadata["env"]]
    assert same_default(cls, field, row[1])


def test_the_contract_configuration_table_has_nothing_else() -> None:
    shown = [unquote(r[0]) for r in table(CONTRACT, "| variable | default | read by |")]
    assert sorted(shown) == sorted(f.metadata["env"] for _, f in settings_fields())


@pytest.mark.parametrize("path", [README, CONTRACT], ids=["README.md", "contract.md"])
def test_every_lb_name_the_pages_mention_is_a_setting(path: pathlib.Path) -> None:
    known = {f.metadata["env"] for _, f in settings_fields()} | NOT_SETTINGS
    mentioned = set(re.findall(r"\bLB_[A-Z0-9_]*[A-Z0-9]\b", path.read_text(encoding="utf-8")))
    assert mentioned - known == set()


def test_the_docs_index_links_every_contract_section() -> None:
    headings = re.findall(r"^## (.+)$", CONTRACT.read_text(encoding="utf-8"), re.MULTILINE)
    index = DOCS_INDEX.read_text(encoding="utf-8")
    for heading in headings:
        anchor = re.sub(r"[^a-z0-9 -]", "", heading.lower()).replace(" ", "-")
        assert f"contract.md#{anchor}" in index, heading

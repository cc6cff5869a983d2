"""CSV and XLSX control lists: rows to controls through a column mapping.

The mapping (control field -> column header) comes from the request or is inferred from the
header row (case and spacing ignored). CSV: encoding and delimiter are detected from the first
64 KB (UTF-8 with or without BOM, else Windows-1252; comma, semicolon or tab); quoted cells may
span lines; short rows are padded and extra cells ignored. XLSX: the named or first sheet, read
in streaming mode (openpyxl read-only, which parses through defusedxml when it is installed).
Rows are numbered as a spreadsheet shows them (the header is row 1).
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from app.errors import NonRetryableError
from models.catalog import MAX_REF_ID, MAX_TITLE, ControlRecord, FamilyRecord, RowError, sort_key_of

HEADER_NAMES: dict[str, tuple[str, ...]] = {
    "ref_id": ("ref_id", "ref id", "id", "control id", "control_id", "control", "identifier", "number"),
    "title": ("title", "name", "control name", "control title"),
    "statement": ("statement", "description", "text", "control text", "requirement"),
    "guidance": ("guidance", "discussion", "supplemental guidance", "notes"),
    "family": ("family", "domain", "category", "group", "section"),
    "parent_ref": ("parent", "parent_ref", "parent ref", "parent id", "parent_id"),
    "withdrawn": ("withdrawn",),
}
REQUIRED = ("ref_id", "title")
TRUE_WORDS = {"true", "yes", "y", "1", "x", "withdrawn"}
SAMPLE_BYTES = 64 * 1024
csv.field_size_limit(1 << 20)  # a cell may hold a long control text, not more than 1 MB


def read_csv(path: Path) -> Iterator[tuple[int, list[str]]]:
    with path.open("rb") as handle:
        sample = handle.read(SAMPLE_BYTES)
    encoding = "utf-8-sig" if sample.startswith(b"\xef\xbb\xbf") else "utf-8"
    try:
        sample.decode(encoding).encode()
    except UnicodeDecodeError as exc:
        if exc.start < len(sample) - 4:  # not just a character cut by the sample's end
            encoding = "cp1252"
    text = sample.decode(encoding, errors="ignore")
    try:
        delimiter = csv.Sniffer().sniff(text, delimiters=",;\t").delimiter
    except csv.Error:
        first = text.splitlines()[0] if text else ""
        delimiter = max(",;\t", key=first.count)
    with path.open(newline="", encoding=encoding) as handle:
        try:
            yield from enumerate(csv.reader(handle, delimiter=delimiter), start=1)
        except UnicodeDecodeError as exc:
            raise NonRetryableError(f"the file is not valid {encoding} text: {exc.reason}") from exc
        except csv.Error as exc:
            raise NonRetryableError(f"unreadable CSV: {exc}") from exc


def read_xlsx(path: Path, sheet: str | None) -> Iterator[tuple[int, list[str]]]:
    from openpyxl import load_workbook

    # A file object: openpyxl would judge a path by its extension, and ours has none.
    with path.open("rb") as handle:
        try:
            workbook = load_workbook(handle, read_only=True, data_only=True)
        except Exception as exc:
            raise NonRetryableError(f"unreadable XLSX: {type(exc).__name__}: {exc}") from exc
        try:
            if sheet is not None and sheet not in workbook.sheetnames:
                raise NonRetryableError(f"no sheet {sheet!r}; the workbook has {workbook.sheetnames}")
            worksheet = workbook[sheet] if sheet else workbook.worksheets[0]
            for number, row in enumerate(worksheet.iter_rows(values_only=True), start=1):
                yield number, ["" if v is None else str(v) for v in row]
        except NonRetryableError:
            raise
        except Exception as exc:  # the sheet XML is parsed lazily: entity declarations fail here
            raise NonRetryableError(f"unreadable XLSX: {type(exc).__name__}: {exc}") from exc
        finally:
            workbook.close()


def parse_rows(
    rows: Iterable[tuple[int, list[str]]], mapping: dict[str, str] | None
) -> Iterator[FamilyRecord | ControlRecord | RowError]:
    rows = iter(rows)
    header: list[str] = []
    for _, header in rows:
        if any(cell.strip() for cell in header):
            break
    columns = _columns([cell.strip() for cell in header], mapping)
    families: set[str] = set()
    for number, row in rows:
        if not any(cell.strip() for cell in row):
            continue
        where = f"row {number}"
        values = {name: (row[i].strip() if i < len(row) else "") for name, i in columns.items()}
        error = _check(values, where)
        if error:
            yield error
            continue
        family = values.get("family") or None
        if family and family not in families:
            families.add(family)
            yield FamilyRecord(ref_id=family, title=family, sort_key=sort_key_of(number))
        yield ControlRecord(
            ref_id=values["ref_id"],
            title=values["title"],
            sort_key=sort_key_of(number),
            location=where,
            family=family,
            parent_ref=values.get("parent_ref") or None,
            kind="enhancement" if values.get("parent_ref") else "control",
            depth=2 if values.get("parent_ref") else 1,
            statement=values.get("statement", ""),
            guidance=values.get("guidance", ""),
            withdrawn=values.get("withdrawn", "").lower() in TRUE_WORDS,
        )


def _columns(header: list[str], mapping: dict[str, str] | None) -> dict[str, int]:
    """Control field -> column index; a missing required column stops the import at once."""
    normalized = {
        " ".join(h.lower().replace("_", " ").split()): i for i, h in reversed(list(enumerate(header)))
    }

    def find(name: str) -> int | None:
        return normalized.get(" ".join(name.lower().replace("_", " ").split()))

    columns: dict[str, int] = {}
    if mapping:
        unknown = sorted(set(mapping) - set(HEADER_NAMES))
        if unknown:
            raise NonRetryableError(
                f"column_mapping names unknown fields {unknown}; known: {sorted(HEADER_NAMES)}"
            )
        for field, column in mapping.items():
            index = find(column)
            if index is None:
                raise NonRetryableError(
                    f"row 1: column {column!r} (for {field}) is not in the header {header}"
                )
            columns[field] = index
    for field, names in HEADER_NAMES.items():
        if field not in columns:
            index = next((i for i in map(find, names) if i is not None), None)
            if index is not None:
                columns[field] = index
    missing = [f for f in REQUIRED if f not in columns]
    if missing:
        raise NonRetryableError(
            f"row 1: no column for {missing}; give a column_mapping or name the columns {list(REQUIRED)}"
        )
    return columns


def _check(values: dict[str, Any], where: str) -> RowError | None:
    ref_id, title = values["ref_id"], values["title"]
    if not ref_id:
        return RowError(where, "ref_id", "empty")
    if len(ref_id) > MAX_REF_ID:
        return RowError(where, "ref_id", f"longer than {MAX_REF_ID} characters")
    if not title:
        return RowError(where, "title", "empty")
    if len(title) > MAX_TITLE:
        return RowError(where, "title", f"longer than {MAX_TITLE} characters")
    if values.get("parent_ref") == ref_id:
        return RowError(where, "parent_ref", "a control cannot be its own parent")
    return None

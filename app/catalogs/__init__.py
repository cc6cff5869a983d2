"""Framework files to records: detect the format, then parse it with bounded trust.

JSON and YAML are read whole (uploads are size-limited) and YAML only with the safe loader, so
a file can never construct Python objects. CSV and XLSX are streamed row by row.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Iterator
from pathlib import Path

import yaml

from app.catalogs.ciso import parse_library
from app.catalogs.oscal import parse_catalog
from app.catalogs.tabular import parse_rows, read_csv, read_xlsx
from app.errors import NonRetryableError
from models import ImportFormat
from models.catalog import ControlRecord, FamilyRecord, RowError

Record = FamilyRecord | ControlRecord | RowError


def detect_format(path: Path, name: str) -> ImportFormat:
    """By content first (a zip is XLSX; JSON with a catalog is OSCAL), then by file name."""
    if zipfile.is_zipfile(path):
        return ImportFormat.XLSX
    with path.open("rb") as handle:
        head = handle.read(1 << 20)
    if head.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"{"):
        return ImportFormat.OSCAL
    if name.lower().endswith((".yaml", ".yml")) or b"requirement_nodes" in head:
        return ImportFormat.CISO_ASSISTANT_YAML
    return ImportFormat.CSV


def read_records(
    path: Path, fmt: ImportFormat, *, mapping: dict[str, str] | None, sheet: str | None
) -> Iterator[Record]:
    if fmt is ImportFormat.OSCAL:
        try:
            document = json.loads(path.read_bytes())
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise NonRetryableError(f"not valid JSON: {exc}") from exc
        return parse_catalog(document)
    if fmt is ImportFormat.CISO_ASSISTANT_YAML:
        try:
            document = yaml.load(path.read_bytes(), Loader=yaml.CSafeLoader)
        except yaml.YAMLError as exc:
            raise NonRetryableError(f"not valid YAML: {exc}") from exc
        return parse_library(document)
    if fmt is ImportFormat.XLSX:
        return parse_rows(read_xlsx(path, sheet), mapping)
    return parse_rows(read_csv(path), mapping)

"""OSCAL catalog JSON (NIST SP 800-53 and others) to families and controls.

Groups become families; controls and the controls nested in them (enhancements) become controls
with a parent link. Statement and guidance keep their nested parts as indented, labelled lines.
Parameter placeholders `{{ insert: param, id }}` are replaced by readable text the way NIST
prints them ("[Assignment: organization-defined time period]", "[Selection (one or more): a; b]");
the raw text is kept in `properties`. The human label is the label prop without a class (the
zero-padded and SP 800-53A ones are other spellings); withdrawn is a `status` prop in any case.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from models.catalog import MAX_REF_ID, ControlRecord, FamilyRecord, RowError, sort_key_of

PLACEHOLDER = re.compile(r"\{\{\s*insert:\s*param,\s*([^}\s]+)\s*\}\}")
WITHDRAWN = {"withdrawn", "moved", "incorporated"}


def parse_catalog(document: Any) -> Iterator[FamilyRecord | ControlRecord | RowError]:
    catalog = document.get("catalog") if isinstance(document, dict) else None
    if not isinstance(catalog, dict):
        yield RowError("$", "catalog", "not an OSCAL catalog: the document has no 'catalog' object")
        return
    params = {p["id"]: p for p in _all_params(catalog) if isinstance(p, dict) and "id" in p}
    for g, group in enumerate(catalog.get("groups") or []):
        where = f"$.catalog.groups[{g}]"
        if not isinstance(group, dict) or not group.get("title"):
            yield RowError(where, "title", "a group needs a title")
            continue
        family = _label(group) or str(group.get("id", g)).upper()
        yield FamilyRecord(ref_id=family, title=str(group["title"]), sort_key=sort_key_of(g))
        yield from _controls(group, where, family, params, parent=None, position=(g,))
    # Controls outside any group (some catalogs have them) belong to no family.
    yield from _controls(catalog, "$.catalog", None, params, parent=None, position=(10**5,))


def _controls(
    container: dict[str, Any],
    where: str,
    family: str | None,
    params: dict[str, Any],
    parent: str | None,
    position: tuple[int, ...],
) -> Iterator[ControlRecord | RowError]:
    for c, control in enumerate(container.get("controls") or []):
        here = f"{where}.controls[{c}]"
        if not isinstance(control, dict) or not control.get("id"):
            yield RowError(here, "id", "a control needs an id")
            continue
        if not control.get("title"):
            yield RowError(here, "title", f"control {control['id']} has no title")
            continue
        ref_id = _label(control) or str(control["id"]).upper()
        if len(ref_id) > MAX_REF_ID:
            yield RowError(here, "id", f"label longer than {MAX_REF_ID} characters")
            continue
        props = {p.get("name"): p.get("value") for p in control.get("props") or [] if isinstance(p, dict)}
        statement_raw = _part_text(control, "statement")
        guidance_raw = _part_text(control, "guidance")
        yield ControlRecord(
            ref_id=ref_id,
            title=str(control["title"]),
            sort_key=str(props.get("sort-id") or sort_key_of(*position, c)),
            location=here,
            source_id=str(control["id"]),
            kind="enhancement" if parent else "control",
            depth=len(position),
            family=family,
            parent_ref=parent,
            statement=_resolve(statement_raw, params),
            guidance=_resolve(guidance_raw, params),
            withdrawn=str(props.get("status", "")).lower() in WITHDRAWN,
            params=[_param_view(p, params) for p in control.get("params") or [] if isinstance(p, dict)],
            links=[
                {"rel": link.get("rel"), "href": link.get("href")}
                for link in control.get("links") or []
                if isinstance(link, dict)
                and link.get("rel") in ("related", "required", "moved-to", "incorporated-into")
            ],
            properties={
                "class": control.get("class"),
                "statement_raw": statement_raw,
                "guidance_raw": guidance_raw,
                **{
                    k: v
                    for k, v in props.items()
                    if k in ("implementation-level", "contributes-to-assurance", "status")
                },
            },
        )
        yield from _controls(control, here, family, params, parent=ref_id, position=(*position, c))


def _label(node: dict[str, Any]) -> str | None:
    labels = [p for p in node.get("props") or [] if isinstance(p, dict) and p.get("name") == "label"]
    for prop in labels:
        if "class" not in prop:
            return str(prop.get("value"))
    return str(labels[0]["value"]) if labels else None


def _all_params(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield from node.get("params") or []
    for child in (*(node.get("groups") or []), *(node.get("controls") or [])):
        if isinstance(child, dict):
            yield from _all_params(child)


def _part_text(control: dict[str, Any], name: str) -> str:
    lines: list[str] = []

    def walk(part: dict[str, Any], indent: int) -> None:
        label = next((p.get("value") for p in part.get("props") or [] if p.get("name") == "label"), None)
        prose = str(part.get("prose", "")).strip()
        if prose or label:
            lines.append("  " * indent + " ".join(x for x in (label, prose) if x))
        for child in part.get("parts") or []:
            if isinstance(child, dict):
                walk(child, indent + (1 if prose or label else 0))

    for part in control.get("parts") or []:
        if isinstance(part, dict) and part.get("name") == name:
            walk(part, 0)
    return "\n".join(lines)


def _param_text(param: dict[str, Any] | None, params: dict[str, Any], depth: int = 0) -> str:
    if param is None:
        return "[Assignment: not defined]"
    select = param.get("select")
    if isinstance(select, dict):
        how = "one or more" if select.get("how-many") == "one-or-more" else "one"
        choices = "; ".join(_resolve(str(c).strip(), params, depth + 1) for c in select.get("choice") or [])
        return f"[Selection ({how}): {choices}]"
    label = param.get("label") or next(
        (g.get("prose") for g in param.get("guidelines") or [] if isinstance(g, dict)), param.get("id")
    )
    text = str(label).strip()
    # Most labels are the bare noun ("frequency"); some already say "organization-defined ...".
    prefix = "" if text.lower().startswith("organization-defined") else "organization-defined "
    return f"[Assignment: {prefix}{text}]"


def _resolve(text: str, params: dict[str, Any], depth: int = 0) -> str:
    if depth > 5:  # a parameter that refers to itself, directly or not
        return text
    return PLACEHOLDER.sub(lambda m: _param_text(params.get(m.group(1)), params, depth), text)


def _param_view(param: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    return {"id": param.get("id"), "text": _param_text(param, params), "raw": param}

"""CISO Assistant framework library YAML to families and controls.

The requirement tree is one flat list linked by `parent_urn`; it is rebuilt from the links, not
from the order. Nodes may lack a name (leaves usually do: the ref_id is their title) or a
ref_id (the urn's last segment stands in). Depth-1 nodes are also the families.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from models.catalog import MAX_REF_ID, ControlRecord, FamilyRecord, RowError, sort_key_of

KINDS = {1: "function", 2: "category", 3: "subcategory"}


def parse_library(document: Any) -> Iterator[FamilyRecord | ControlRecord | RowError]:
    framework = (document.get("objects") or {}).get("framework") if isinstance(document, dict) else None
    if not isinstance(framework, dict) or not isinstance(framework.get("requirement_nodes"), list):
        yield RowError("$.objects.framework", "requirement_nodes", "not a CISO Assistant framework library")
        return
    where = "$.objects.framework.requirement_nodes"
    nodes: dict[str, tuple[int, dict[str, Any]]] = {}
    for n, node in enumerate(framework["requirement_nodes"]):
        if not isinstance(node, dict) or not isinstance(node.get("urn"), str):
            yield RowError(f"{where}[{n}]", "urn", "a requirement node needs a urn")
        elif node["urn"] in nodes:
            yield RowError(f"{where}[{n}]", "urn", f"urn {node['urn']} appears twice")
        else:
            nodes[node["urn"]] = (n, node)

    def ref_of(node: dict[str, Any]) -> str:
        return str(node.get("ref_id") or node["urn"].rsplit(":", 1)[-1])

    def ancestry(urn: str) -> list[str] | None:
        """urns from the root down to this node; None when a parent is missing or a cycle exists."""
        chain: list[str] = []
        while urn:
            if urn in chain or urn not in nodes:
                return None
            chain.append(urn)
            urn = nodes[urn][1].get("parent_urn") or ""
        return chain[::-1]

    for urn, (n, node) in nodes.items():
        here = f"{where}[{n}]"
        chain = ancestry(urn)
        if chain is None:
            yield RowError(here, "parent_urn", f"parent {node.get('parent_urn')} is not in the file")
            continue
        ref_id = ref_of(node)
        if len(ref_id) > MAX_REF_ID:
            yield RowError(here, "ref_id", f"longer than {MAX_REF_ID} characters")
            continue
        depth = len(chain)
        family_node = nodes[chain[0]][1]
        title = str(node.get("name") or ref_id)
        if depth == 1:
            yield FamilyRecord(ref_id=ref_id, title=title, sort_key=sort_key_of(n))
        yield ControlRecord(
            ref_id=ref_id,
            title=title,
            sort_key=".".join(sort_key_of(nodes[u][0]) for u in chain),
            location=here,
            source_id=urn,
            kind=KINDS.get(depth, f"level-{depth}"),
            depth=depth,
            assessable=bool(node.get("assessable", False)),
            family=ref_of(family_node),
            parent_ref=ref_of(nodes[chain[-2]][1]) if depth > 1 else None,
            statement=str(node.get("description") or ""),
            links=[
                {"rel": "reference-control", "href": str(u)} for u in node.get("reference_controls") or []
            ],
            properties={k: node[k] for k in ("annotation", "typical_evidence", "translations") if k in node},
        )

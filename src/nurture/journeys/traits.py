"""What an `update` step does to a contact's traits: set and unset dotted paths, add and
remove tags (the `tags` trait). Pure: the runtime applies it to the stored traits inside
the transaction, the back-test to its copy."""

from __future__ import annotations

from typing import Any

from nurture.journeys.model import UpdateStep


def apply_update(traits: dict[str, Any], step: UpdateStep) -> dict[str, Any]:
    """The traits after the step (a new dict; `traits` is left as it was)."""
    out = dict(traits)
    for path, value in step.set.items():
        set_path(out, path.split("."), value)
    for path in step.unset:
        unset_path(out, path.split("."))
    if step.add_tags or step.remove_tags:
        tags = [x for x in out.get("tags") or [] if isinstance(x, str)]
        tags += [x for x in step.add_tags if x not in tags]
        out["tags"] = [x for x in tags if x not in step.remove_tags]
    return out


def set_path(doc: dict[str, Any], parts: list[str], value: Any) -> None:
    for part in parts[:-1]:
        child = doc.get(part)
        if not isinstance(child, dict):
            child = {}
            doc[part] = child
        else:
            child = dict(child)
            doc[part] = child
        doc = child
    doc[parts[-1]] = value


def unset_path(doc: dict[str, Any], parts: list[str]) -> None:
    for part in parts[:-1]:
        child = doc.get(part)
        if not isinstance(child, dict):
            return
        child = dict(child)
        doc[part] = child
        doc = child
    doc.pop(parts[-1], None)

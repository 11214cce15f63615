"""Validation errors as users read them: one ``key.path: message (got value)`` per bad key.

Shared by the constraint registry and recipe validation; plain pydantic, no backend, so
`ptycli validate` stays light.
"""

from __future__ import annotations

import json
from typing import Any


def validation_problems(exc: Any, data: Any, prefix: str = "") -> list[tuple[str, str]]:
    """(dotted key path, message) for every error of a pydantic ValidationError.

    pydantic's locations also hold the tags of union members (``function-after[...]``,
    ``constrained-int``, a stage's ``lsqml``); only the parts that index into ``data`` are
    keys, so the path is rebuilt by walking the input. Of the members of one union, those
    the input has the right type for (a table for a schedule) give the errors; the others'
    "should be a number" would only mislead. What remains is one message per key, ending
    with the value given.
    """
    found = []  # (key, message, [(union site, member tag)], the (site, tag)s it fits)
    for err in exc.errors():
        keys, node, tags = [], data, []
        loc = err["loc"]
        for i, part in enumerate(loc):
            if isinstance(node, dict) and isinstance(part, str) and part in node:
                keys.append(part)
                node = node[part]
            elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
                keys.append(str(part))
                node = node[part]
            elif i == len(loc) - 1 and err["type"] == "missing":
                keys.append(str(part))
            else:
                tags.append((tuple(keys), part))
        if err["type"] in ("union_tag_invalid", "union_tag_not_found"):
            keys.append("type")
        key = ".".join([prefix, *keys] if prefix else keys) or "(root)"
        # a member fits the input when it got past the type check: an error deeper in, or another kind
        fits = {(site, tag) for site, tag in tags if not _mismatch(err["type"]) or len(keys) > len(site)}
        found.append((key, _message(err), tags, fits))
    fitting = set().union(*(fits for *_, fits in found))
    sites = {site for site, _ in fitting}
    merged: dict[str, list[str]] = {}
    for key, msg, tags, _ in found:
        if any(site in sites and (site, tag) not in fitting for site, tag in tags):
            continue
        if msg not in merged.setdefault(key, []):
            merged[key].append(msg)
    return [(key, _join(msgs)) for key, msgs in merged.items()]


def _mismatch(kind: str) -> bool:
    """An error that only says the input is of another type (another union member's)."""
    return kind.endswith(("_type", "_parsing")) or kind in ("literal_error", "is_instance_of")


def _message(err: dict[str, Any]) -> str:
    # "a valid dictionary or instance of ScheduleValue" names a Python class; recipes have tables
    msg = "Input should be a table" if err["type"] == "model_type" else str(err["msg"])
    for noise in ("Value error, ", "Assertion failed, "):
        msg = msg.removeprefix(noise)
    if err["type"] == "missing":
        return msg
    got = json.dumps(err.get("input"), default=str)
    return f"{msg} (got {got if len(got) <= 60 else got[:57] + '...'})"


def _join(messages: list[str]) -> str:
    """One message per key: 'Input should be A (got x) or Input should be B (got x)' reads
    as 'Input should be A or B (got x)'."""
    if len(messages) == 1:
        return messages[0]
    lead, tails = "Input should be ", [m.rsplit(" (got ", 1) for m in messages]
    if all(m.startswith(lead) and len(t) == 2 for m, t in zip(messages, tails)) and len({t[1] for t in tails}) == 1:
        return lead + " or ".join(t[0][len(lead):] for t in tails) + " (got " + tails[0][1]
    return " or ".join(messages)

"""External state records (the compacted ``profiles`` topic) and their flat form.

A profile travels as an Avro ``Profile`` (numbers and labels maps); feature functions see
it flat, ``{field: value, ..., "updated_at": ms}``, exactly as training saw it.

>>> rec = to_record({"card_id": "c1", "avg_amount": 40.0, "segment": "retail",
...                  "updated_at": 5}, key_field="card_id")
>>> rec["entity_key"], rec["numbers"], rec["labels"]
('c1', {'avg_amount': 40.0}, {'segment': 'retail'})
>>> to_flat(rec)
{'avg_amount': 40.0, 'segment': 'retail', 'updated_at': 5}
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from udfs.codec import envelope


def to_record(flat: Mapping[str, Any], *, key_field: str, source: str = "profiles") -> dict:
    """A Profile record from a flat dict; ``updated_at`` becomes the envelope timestamp."""
    rec = envelope(source, "1")
    if flat.get("updated_at") is not None:
        rec["timestamp"] = int(flat["updated_at"])
    numbers, labels = {}, {}
    for k, v in flat.items():
        if k in (key_field, "updated_at") or v is None:
            continue
        if isinstance(v, int | float):  # bools too
            numbers[k] = float(v)
        else:
            labels[k] = str(v)
    rec.update(entity_key=str(flat[key_field]), numbers=numbers, labels=labels)
    return rec


def to_flat(record: Mapping[str, Any]) -> dict[str, Any]:
    """The flat profile a feature function sees (numbers, labels, ``updated_at``)."""
    flat: dict[str, Any] = dict(record["numbers"])
    flat.update(record["labels"])
    flat["updated_at"] = record["timestamp"]
    return flat

"""Querysets of the labeling hot paths compiled to SQL once per database vendor, then re-run with new values.

Why: profiling ``next`` (docs/web-tier.md, "Labeling CPU per request") showed the ORM building and
compiling the queue query (two correlated subqueries, ``FOR UPDATE SKIP LOCKED``) costing more CPU than
PostgreSQL took to run it. The SQL text only depends on the queryset's shape, not on the labeler or the
time, so it is compiled once with sentinel values standing in for those, and each call substitutes the
real values at the sentinels' positions in the parameter list. The ORM stays the one definition of the
query: no hand-written SQL to keep in step with it.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from django.db import connection
from django.db.models import Model, QuerySet

_CACHE: dict[tuple[str, str], tuple[str, list[Any], list[str | None]]] = {}


def _sentinels(values: dict[str, Any]) -> dict[str, Any]:
    """A value of the same type as each real value that no real query parameter can be equal to."""
    out: dict[str, Any] = {}
    for i, (name, value) in enumerate(sorted(values.items())):
        if isinstance(value, bool) or value is None:
            raise TypeError(f"{name}: only int, str and datetime values can be substituted")
        if isinstance(value, int):
            out[name] = -2_123_456_789 + i  # within a 32-bit column (Django refuses out-of-range lookups)
        elif isinstance(value, str):
            out[name] = f"\x1fsentinel-{i}\x1f"
        elif isinstance(value, datetime):
            out[name] = datetime(1901, 2, 3, 4, 5, 6, 7 + i, tzinfo=UTC)
        else:
            raise TypeError(f"{name}: only int, str and datetime values can be substituted")
    return out


def _adapt(value: Any) -> Any:
    return connection.ops.adapt_datetimefield_value(value) if isinstance(value, datetime) else value


def first(key: str, model: type[Model], build: Callable[[dict[str, Any]], QuerySet], values: dict[str, Any]):
    """``build(values).first()``, from SQL compiled once per vendor for ``key``.

    ``build`` gets the values (the sentinels on the first call) and returns the queryset, unsliced and
    ordered; every value must reach the SQL as a parameter (asserted when it is compiled). Only the
    model's own columns are read (no ``select_related``).
    """
    cache_key = (connection.vendor, key)
    entry = _CACHE.get(cache_key)
    if entry is None:
        sentinels = _sentinels(values)
        sql, params = build(sentinels)[:1].query.get_compiler(connection=connection).as_sql()
        by_param = {_adapt(v): name for name, v in sentinels.items()}
        slots = [by_param.get(p) if isinstance(p, int | str | datetime) and not isinstance(p, bool) else None
                 for p in params]
        missing = set(sentinels) - set(slots)
        if missing:  # a value was folded into the SQL text: this query cannot be re-run with new values
            raise ValueError(f"{key}: values not passed as parameters: {sorted(missing)}")
        entry = _CACHE[cache_key] = (sql, list(params), slots)
    sql, params, slots = entry
    bound = [p if name is None else _adapt(values[name]) for p, name in zip(params, slots, strict=True)]
    rows = list(model.objects.raw(sql, bound))
    return rows[0] if rows else None


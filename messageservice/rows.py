"""Model instances from rows of hand-written SQL, for the few queries on the hot path.

The ORM compiles a query every time it runs; for a join it can cost more than running it. The
hot path writes such queries once (per database vendor) and builds the instances from their
rows here, with the same value conversions the ORM applies (`from_db_value`, the backend's
converters), so the instances are the ones the ORM would have made.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from django.db import connection


def columns(model: Any, alias: str) -> str:
    """`alias.col, ...` for every concrete field of `model`, in field order."""
    quote = connection.ops.quote_name
    return ", ".join(f"{alias}.{quote(f.column)}" for f in model._meta.concrete_fields)


def table(model: Any) -> str:
    return str(connection.ops.quote_name(model._meta.db_table))


def width(model: Any) -> int:
    """How many columns `columns(model, ...)` selects."""
    return len(model._meta.concrete_fields)


@cache
def _converters(model: Any, vendor: str) -> tuple[list[str], list[tuple[list[Any], Any]]]:
    names = []
    converters = []
    for field in model._meta.concrete_fields:
        column = field.get_col(model._meta.db_table)
        names.append(field.attname)
        converters.append(
            (
                connection.ops.get_db_converters(column) + column.get_db_converters(connection),
                column,
            )
        )
    return names, converters


def instance(model: Any, values: tuple[Any, ...] | list[Any]) -> Any:
    """The `model` instance for `values`, selected with `columns(model, ...)`."""
    names, converters = _converters(model, connection.vendor)
    converted = []
    for (functions, column), value in zip(converters, values, strict=True):
        for function in functions:
            value = function(value, column, connection)
        converted.append(value)
    return model.from_db(connection.alias, names, converted)

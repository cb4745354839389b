"""List responses with cursor pagination (``after``, ``limit``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Annotated, Any, TypeVar

from fastapi import Query

from tuneforge.service.schemas import ListObject

T = TypeVar("T")

LimitQuery = Annotated[int, Query(ge=1, le=100, description="Number of items to return (1-100)")]
AfterQuery = Annotated[str | None, Query(description="Cursor: the id of the last item of the previous page")]


def page(items: Sequence[T], has_more: bool, present: Callable[[T], Any]) -> ListObject:
    data = [present(item) for item in items]
    return ListObject(
        data=data,
        has_more=has_more,
        first_id=data[0].id if data else None,
        last_id=data[-1].id if data else None,
    )

"""`Record`: one input record and where it came from, with typed field access.

Every accessor raises DatasetError naming the source (file path or a label such
as `<list>`), the line (for JSON/JSONL the line the record starts on; for
in-memory lists, parquet and `datasets.Dataset` the 1-based row number) and the
field. A field whose value is null counts as missing: parquet and
`datasets.Dataset` fill absent columns with null.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Hashable

from realflow.api.errors import DatasetError

__all__ = ["Record"]


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


@dataclass(frozen=True)
class Record:
    """A record's fields plus its location (`source`, `line`) for error messages."""

    fields: dict[str, Any]
    source: str
    line: int

    def error(self, message: str, field: str | None = None) -> DatasetError:
        return DatasetError(message, path=self.source, line=self.line, field=field)

    def has(self, field: str) -> bool:
        return self.fields.get(field) is not None

    def get(self, field: str) -> Any:
        """The value of a required field (any type)."""
        if field not in self.fields:
            raise self.error("missing field", field)
        value = self.fields[field]
        if value is None:
            raise self.error("missing field (null)", field)
        return value

    def id(self, field: str = "id") -> Hashable:
        """The record's id: a string or an integer."""
        value = self.get(field)
        if not isinstance(value, (str, int)) or isinstance(value, bool):
            raise self.error(f"id must be a string or an integer, got {_type_name(value)}", field)
        return value

    def text(self, field: str, *, allow_empty: bool = True) -> str:
        value = self.get(field)
        if not isinstance(value, str):
            raise self.error(f"expected a string, got {_type_name(value)}", field)
        if not value and not allow_empty:
            raise self.error("must be a non-empty string", field)
        return value

    def texts(self, field: str) -> list[str]:
        """A string or a non-empty list of strings, as a list."""
        value = self.get(field)
        if isinstance(value, str):
            return [value]
        if not isinstance(value, list) or not value:
            what = "an empty list" if isinstance(value, list) else _type_name(value)
            raise self.error(f"expected a string or a non-empty list of strings, got {what}", field)
        for j, v in enumerate(value):
            if not isinstance(v, str):
                raise self.error(f"expected a string, got {_type_name(v)}", f"{field}[{j}]")
        return list(value)

    def messages(self, field: str = "messages") -> list[dict[str, str]]:
        """A non-empty chat: a list of {"role": str, "content": str} objects."""
        value = self.get(field)
        if not isinstance(value, list) or not value:
            what = "an empty list" if isinstance(value, list) else _type_name(value)
            raise self.error(f"expected a non-empty list of messages, got {what}", field)
        out = []
        for j, m in enumerate(value):
            if not isinstance(m, dict):
                raise self.error(f"expected an object with 'role' and 'content', got {_type_name(m)}",
                                 f"{field}[{j}]")
            for key in ("role", "content"):
                if not isinstance(m.get(key), str):
                    raise self.error(f"expected a string, got {_type_name(m.get(key))}", f"{field}[{j}].{key}")
            out.append({"role": m["role"], "content": m["content"]})
        return out

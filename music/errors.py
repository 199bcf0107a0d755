"""One error type for bad input data, naming where the problem is."""

from __future__ import annotations


class DataError(ValueError):
    """Bad input: names the source (file or dataset), the record and the field."""

    def __init__(self, source: str, record: object, field: str | None, problem: str):
        self.source = str(source)
        self.record = record
        self.field = field
        self.problem = problem
        where = f"{self.source}, record {record}"
        if field:
            where += f", field '{field}'"
        super().__init__(f"{where}: {problem}")

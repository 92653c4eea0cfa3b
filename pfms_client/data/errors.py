"""The one error type for bad input data, raised before any training starts."""

from __future__ import annotations

from os import PathLike


class DataValidationError(ValueError):
    """A data file (or folder) does not match the declared schema.

    Carries ``file``, ``column`` and ``line`` (1-based, header = line 1; None
    when not applicable) so a user can jump straight to the offending cell
    instead of debugging a NaN loss ten rounds later.
    """

    def __init__(
        self,
        file: str | PathLike[str],
        reason: str,
        *,
        column: str | None = None,
        line: int | None = None,
    ) -> None:
        self.file = str(file)
        self.column = column
        self.line = line
        self.reason = reason
        super().__init__(self._format())

    def _format(self) -> str:
        where = self.file
        if self.line is not None:
            where += f" line {self.line}"
        if self.column is not None:
            where += f", column '{self.column}'"
        return f"{where}: {self.reason}"

    def __reduce__(self):  # keep picklable across Ray / multiprocessing
        return (_rebuild, (self.file, self.reason, self.column, self.line))


def _rebuild(file: str, reason: str, column: str | None, line: int | None) -> DataValidationError:
    return DataValidationError(file, reason, column=column, line=line)

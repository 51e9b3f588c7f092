"""The one exception type the command line turns into a one-line error and exit code 2."""


class UserError(Exception):
    """Bad input from the user: a file, a line, an option. Printed as one line, exit code 2."""

    def __init__(self, message: str, path: str | None = None, line: int | None = None):
        where = ""
        if path is not None:
            where = f"{path}:{line}: " if line is not None else f"{path}: "
        super().__init__(where + message)


def first_line(e: BaseException) -> str:
    """An exception as one short line, its type first (library errors can run to pages)."""
    s = str(e).strip().splitlines()
    return f"{type(e).__name__}: {s[0] if s else ''}"[:300]

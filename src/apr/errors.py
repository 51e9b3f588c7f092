"""The one exception type the command line turns into a one-line error and exit code 2."""

from __future__ import annotations


class UserError(Exception):
    """Bad input from the user: a file, a line, a setting. Printed as one line, exit code 2.

    The library names a setting by its field name in backticks (`child_budget`) and lists
    those names in `fields`; a command that offers the setting as an option names the option
    instead (`apr.commands.main`: `--child-budget`), so one message serves a config file, a
    Python caller and the command line."""

    def __init__(self, message: str, path: str | None = None, line: int | None = None,
                 fields: tuple[str, ...] = ()):
        self.message, self.path, self.line, self.fields = message, path, line, tuple(fields)
        where = ""
        if path is not None:
            where = f"{path}:{line}: " if line is not None else f"{path}: "
        super().__init__(where + message)

    def renamed(self, names: dict[str, str]) -> str:
        """The message with each field in `names` (field -> what to call it) renamed."""
        message = self.message
        for name in self.fields:
            if name in names:
                message = message.replace(f"`{name}`", names[name])
        return str(UserError(message, self.path, self.line))

def first_line(e: BaseException) -> str:
    """An exception as one short line, its type first (library errors can run to pages)."""
    s = str(e).strip().splitlines()
    return f"{type(e).__name__}: {s[0] if s else ''}"[:300]

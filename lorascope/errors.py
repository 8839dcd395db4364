"""The one exception a user mistake raises; the CLI turns it into a one-line message and exit code 2."""


class LorascopeError(ValueError):
    """Bad input: a path that is not a run, a rank of 0, modules that do not match, ...

    The message says what was given and what to do; it is shown to the user as is.
    """


def one_line(e: Exception) -> str:
    """A user mistake or an OS refusal as the one line shown: "path: Permission denied", not the
    errno and the repr that str(OSError) gives."""
    if isinstance(e, OSError) and e.strerror and e.filename:
        return f"{e.filename}: {e.strerror}"
    return str(e)

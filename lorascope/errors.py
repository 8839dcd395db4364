"""The one exception a user mistake raises; the CLI turns it into a one-line message and exit code 2."""


class LorascopeError(ValueError):
    """Bad input: a path that is not a run, a rank of 0, modules that do not match, ...

    The message says what was given and what to do; it is shown to the user as is.
    """

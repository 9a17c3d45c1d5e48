"""User-facing errors: one readable line that says what is wrong and what to do."""


class FlameTalkError(Exception):
    """An error caused by the user's input or set-up (bad file, missing checkpoint, ...).

    The CLI prints `str(err)` as one line and exits with `exit_code`; nothing else is printed.
    """

    exit_code = 2

    def __init__(self, message: str, exit_code: int | None = None):
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code

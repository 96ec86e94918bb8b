"""Exceptions shared by every step.

``InputError`` is the user's fault (bad file, bad argument, nonsense geometry): front ends show its
message as one line and the CLI exits with status 2. Anything else escaping a step is an internal
failure (exit status 1).
"""


class InputError(ValueError):
    """Bad input or usage; the message is one line, fit to show to a user."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))

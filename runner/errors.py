"""Errors a user can act on: printed as one line, never as a traceback."""


class UserError(Exception):
    """A problem with the user's input or environment; its message is one line."""


class SpecError(UserError):
    """A spec that does not load or validate; the message starts with file:line:col."""

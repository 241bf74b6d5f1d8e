"""One exception type for problems the user can fix, so CLI and GUI can show the message alone."""


class NiivInputError(ValueError):
    """Bad input (volume, alpha, weights file...): the message says what is wrong and what to do."""

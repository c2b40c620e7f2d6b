"""The one error conversion raises."""


class ConversionError(ValueError):
    """A checkpoint or module that does not fit the architecture; the message lists every problem."""

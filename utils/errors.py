"""The base of every error meant for the user: a message naming the file or key and the fix."""


class ShipReIDError(ValueError):
    """Raised for bad input (data, config, weights); entry points print it without a traceback."""

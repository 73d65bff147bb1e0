"""maider: a private code model on a rented GPU for an hour or two."""

__version__ = "0.1.0"

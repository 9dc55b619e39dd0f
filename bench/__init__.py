"""The overhead benchmark: ``python -m bench`` (see :mod:`bench.__main__`)."""

"""steerkit's version, on the ground floor so that every room can stamp it into the files it writes
(`steerkit.__version__` is the same object)."""

__version__ = "0.1.0"

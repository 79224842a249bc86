"""The project's error types, at the bottom of the import graph (every layer may raise them and
`cli.py` turns each into one `error: ...` line without importing the layers)."""


class StoreError(RuntimeError):
    """A store that doesn't match what's asked, or is incomplete/missing; one clear line."""


class WorkdirBusy(RuntimeError):
    """Another process is writing the same part of the work directory; one clear line."""


class CorruptCheckpoint(RuntimeError):
    """A checkpoint whose files fail their digest or do not decode; one clear line with the fix."""

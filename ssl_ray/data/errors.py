"""The one error every data source raises when its location cannot be used."""


class DataSourceError(RuntimeError):
    """The data location is missing, unreachable, empty, or holds something that is not the
    dataset. The message names the URL and the cause on one line."""


def warn(message: str) -> None:
    """One line on the user's console for something they should know but that does not stop
    the run (a setting adjusted to the data, a layout that trains worse than it could)."""
    import sys

    print(f"ssl-ray: warning: {message}", file=sys.stderr, flush=True)

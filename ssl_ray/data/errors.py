"""The one error every data source raises when its location cannot be used."""


class DataSourceError(RuntimeError):
    """The data location is missing, unreachable, empty, or holds something that is not the
    dataset. The message names the URL and the cause on one line."""

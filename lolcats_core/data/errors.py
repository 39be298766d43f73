"""Errors raised while reading, preparing or loading data; each names the file or field at fault."""

from ..errors import LolcatsError


class DataError(LolcatsError, ValueError):
    """A data file is missing or malformed, a dataset is empty, or a sequence does not fit the model."""

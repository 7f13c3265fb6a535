"""The errors and warnings of the checkpoint converters."""

from __future__ import annotations


class ConversionError(ValueError):
    """A checkpoint cannot be converted: the message names the file and what is wrong with it."""


class ConversionWarning(UserWarning):
    """A checkpoint was converted, but something about it deserves a look (e.g. frozen weights that differ from the
    base model's)."""

"""The one exception family of siamese-search.

Every error a user can cause (a bad image, a bad dataset, a model that does not match) is a
`SiameseSearchError`. Scripts print its message on one line; the web layer maps subclasses to HTTP
status codes in one place.
"""


class SiameseSearchError(Exception):
    """Base class: a problem the user can fix, with a message that says what and where."""


class BadImageError(SiameseSearchError):
    """An image could not be used: undecodable, empty, truncated, too large, wrong shape or type."""


class UnsupportedImageError(BadImageError):
    """Bytes that are not an image in any format we can decode (text, a PDF, an SVG, noise)."""


class DatasetError(SiameseSearchError):
    """A dataset is missing, malformed or too small to train or evaluate on."""


class ModelError(SiameseSearchError):
    """A model directory is missing, incomplete, or its card does not match its weights."""


class ModelMismatchError(ModelError):
    """A model is used with data (a gallery, an index) built by a different model."""


class NotFoundError(SiameseSearchError):
    """An id or a path that does not exist."""


class ConfigError(SiameseSearchError):
    """A parameter value that is out of range or inconsistent with the others."""

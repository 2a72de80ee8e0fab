"""The gallery's errors, in the one family of `encoder.errors`."""
from encoder.errors import SiameseSearchError


class GalleryError(SiameseSearchError):
    """A gallery is missing, locked by another writer, or its files do not belong together."""

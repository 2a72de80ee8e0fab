"""The gallery: reference images matched by their embeddings.

`Gallery` keeps a FAISS index (`vectors`) and a SQLAlchemy metadata store (`store`) consistent;
`ingest` fills it from a folder tree or a CSV manifest.
"""
from .gallery import Gallery, GalleryStats
from .records import Item, Match, Original
from .vectors import IndexSpec, Recall, VectorIndex

__all__ = ["Gallery", "GalleryStats", "Item", "Match", "Original", "IndexSpec", "Recall",
           "VectorIndex"]

"""Siamese encoder: datasets, pairs, losses, models, training, calibration and `Embedder`.

TensorFlow is imported lazily (by `Embedder`, training and the models), so the light parts of
this package (images, datasets, calibration) load fast.
"""
from . import quiet

quiet.install()  # before anything imports TensorFlow: its start-up lines are noise for users

from .artifact import ModelCard, load_card
from .calibration import Calibration, calibrate
from .embedder import Embedder
from .errors import (BadImageError, ConfigError, DatasetError, ModelError, ModelMismatchError,
                     NotFoundError, SiameseSearchError, UnsupportedImageError)
from .images import Preprocessing, prepare_batch

__all__ = ["Embedder", "ModelCard", "load_card", "Calibration", "calibrate", "Preprocessing",
           "prepare_batch", "SiameseSearchError", "BadImageError", "ConfigError", "DatasetError",
           "ModelError", "ModelMismatchError", "NotFoundError", "UnsupportedImageError"]

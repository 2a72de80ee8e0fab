"""The model artifact: a directory holding `model.keras` (the encoder) and `card.json`.

The card says everything needed to use the model correctly (input shape and preprocessing,
embedding size, calibrated thresholds) and where it came from (data, settings, metrics, time).
Its `model_id` is a hash of the weights and preprocessing, so a gallery can tell whether it was
built with the same model; loading recomputes it and refuses a card that does not match.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from .calibration import Calibration, OpenSetModel, OperatingPoint, ProbabilityMap
from .domain import DOMAIN_FILE, DomainCard
from .errors import ModelError
from .images import Preprocessing

MODEL_FILE = "model.keras"
CARD_FILE = "card.json"
CARD_FORMAT = 1


@dataclass
class ModelCard:
    model_id: str
    architecture: str
    embedding_dim: int
    preprocessing: Preprocessing
    calibration: Calibration
    validation: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    created: str = ""
    distance: str = "euclidean"
    format: int = CARD_FORMAT
    # What the verdict needs beyond the threshold (`verdict.py`); cards written before these
    # existed load without them, and every verdict then says what it lacks.
    operating_points: dict[str, OperatingPoint] = field(default_factory=dict)
    probability: Optional[ProbabilityMap] = None
    open_set: Optional[OpenSetModel] = None
    domain: Optional[DomainCard] = None
    # Non-empty: the verdict's calibration does not describe these weights (e.g. a final fit on
    # every class), and why; every rule from this card then says it is not calibrated.
    calibration_note: str = ""
    # What one class is, in words the pages use for a verdict: "same kind of garment", "same
    # person". Chosen at training (`TrainConfig.same`); "class" when nobody said.
    same: str = "class"

    @classmethod
    def for_encoder(cls, encoder, pre: Preprocessing, calibration: Calibration,
                    validation: dict[str, Any], training: dict[str, Any], **verdicts: Any
                    ) -> "ModelCard":
        """The card of a freshly trained `encoder`: its id hashed from its weights, created now."""
        return cls(model_id=compute_model_id(encoder.get_weights(), pre, encoder.name),
                   architecture=encoder.name, embedding_dim=int(encoder.output_shape[-1]),
                   preprocessing=pre, calibration=calibration, validation=validation,
                   training=training, created=now(), **verdicts)

    @property
    def threshold(self) -> float:
        return self.calibration.threshold

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in asdict(self).items()
             if k not in ("operating_points", "probability", "open_set", "domain",
                          "calibration_note")}
        if self.calibration_note:
            d["calibration_note"] = self.calibration_note
        d["preprocessing"] = self.preprocessing.to_dict()
        d["calibration"] = self.calibration.to_dict()
        d["input_shape"] = list(self.preprocessing.shape)
        if self.operating_points:
            d["operating_points"] = {k: p.to_dict() for k, p in self.operating_points.items()}
        for key in ("probability", "domain", "open_set"):  # the long table last
            if getattr(self, key) is not None:
                d[key] = getattr(self, key).to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = CARD_FILE) -> "ModelCard":
        try:
            if d.get("format") != CARD_FORMAT:
                raise ModelError(f"{where}: card format {d.get('format')!r} is not {CARD_FORMAT}")
            return cls(model_id=str(d["model_id"]), architecture=str(d["architecture"]),
                       embedding_dim=int(d["embedding_dim"]),
                       preprocessing=Preprocessing.from_dict(d["preprocessing"]),
                       calibration=Calibration(**d["calibration"]),
                       validation=dict(d.get("validation", {})), training=dict(d.get("training", {})),
                       created=str(d.get("created", "")), distance=str(d.get("distance", "euclidean")),
                       operating_points={str(k): OperatingPoint.from_dict(v)
                                         for k, v in d.get("operating_points", {}).items()},
                       probability=_optional(ProbabilityMap, d.get("probability")),
                       open_set=_optional(OpenSetModel, d.get("open_set")),
                       domain=_optional(DomainCard, d.get("domain")),
                       calibration_note=str(d.get("calibration_note", "")),
                       same=str(d.get("same", "class")))
        except ModelError:
            raise
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"{where}: incomplete or malformed model card ({type(exc).__name__}: "
                             f"{exc})") from None


def _optional(kind, data):
    return None if data is None else kind.from_dict(data)


def compute_model_id(weights: list[np.ndarray], pre: Preprocessing, architecture: str) -> str:
    h = hashlib.sha256()
    h.update(json.dumps({"pre": pre.to_dict(), "arch": architecture}, sort_keys=True).encode())
    for w in weights:
        h.update(str(w.shape).encode())
        h.update(np.ascontiguousarray(w, dtype=np.float32).tobytes())
    return h.hexdigest()[:16]


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat()


def save_model(directory: str | os.PathLike, encoder, card: ModelCard, domain_model=None) -> Path:
    """Write model, domain model (if any) and card into a fresh temp directory, then move it into
    place, so a crash never leaves a half-written model behind. An existing model directory is
    replaced."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    if (domain_model is None) != (card.domain is None):
        raise ModelError("a domain model and its card entry go together")
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o777 & ~umask)  # a model directory as readable as any other (mkdtemp: 0700)
        encoder.save(tmp / MODEL_FILE)
        if domain_model is not None:
            domain_model.save(tmp / DOMAIN_FILE)
        (tmp / CARD_FILE).write_text(json.dumps(card.to_dict(), indent=2) + "\n")
        if directory.exists():
            # Anything else the directory holds (a README, plots) stays with the model.
            for extra in directory.iterdir():
                if extra.name not in (MODEL_FILE, CARD_FILE, DOMAIN_FILE) and extra.is_file():
                    shutil.copy2(extra, tmp / extra.name)
            old = directory.with_name(f".{directory.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            directory.rename(old)
            tmp.rename(directory)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def load_card(directory: str | os.PathLike) -> ModelCard:
    directory = Path(directory)
    if not directory.is_dir():
        raise ModelError(f"{directory}: no such model directory")
    path = directory / CARD_FILE
    if not path.is_file():
        raise ModelError(f"{directory}: no {CARD_FILE}; a model directory holds {MODEL_FILE} and "
                         f"{CARD_FILE} as written by siamese-train")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ModelError(f"{path}: expected a JSON object")
    return ModelCard.from_dict(data, str(path))


def load_model(directory: str | os.PathLike):
    """The Keras encoder and its card, checked against each other."""
    import keras

    directory = Path(directory)
    card = load_card(directory)
    path = directory / MODEL_FILE
    if not path.is_file():
        raise ModelError(f"{directory}: no {MODEL_FILE}")
    try:
        model = keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as exc:  # Keras raises many types for a damaged file
        raise ModelError(f"{path}: cannot load the Keras model ({type(exc).__name__}: {exc})") from None
    expected = (None, *card.preprocessing.shape)
    if tuple(model.input_shape) != expected:
        raise ModelError(f"{directory}: model input {model.input_shape} does not match the card's "
                         f"{expected}")
    if tuple(model.output_shape) != (None, card.embedding_dim):
        raise ModelError(f"{directory}: model output {model.output_shape} does not match the card's "
                         f"embedding size {card.embedding_dim}")
    actual = compute_model_id(model.get_weights(), card.preprocessing, card.architecture)
    if actual != card.model_id:
        raise ModelError(f"{directory}: card is for model {card.model_id} but the weights hash to "
                         f"{actual}; the card and model file do not belong together")
    return model, card

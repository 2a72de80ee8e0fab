"""`Embedder`: a loaded model that turns images into embeddings, fast."""
from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Iterable, Optional, Sequence, Union

import numpy as np

from . import distance as _distance
from .artifact import ModelCard, load_model
from .batcher import Batcher
from .errors import ModelError
from .images import ImageSource, prepare_batch
from .verdict import DomainCheck, Rule, Verdict, Verdicts

Images = Union[np.ndarray, Sequence[ImageSource], Iterable[ImageSource]]
log = logging.getLogger(__name__)
# An embedding this near a featureless point is that point: the compiled model and the layers
# called one by one agree to ~1e-7, and an image the model describes at all lies ~1e-3 or more
# away (Fashion-MNIST test images under affine distortion: the nearest 2.4e-3).
FEATURELESS_GAP = 1e-4
# FAISS's float32 squared distances are exact up to rounding, at most this share of the squared
# norms: 50 times what was measured (flat and HNSW, 64 and 128 dimensions, unit vectors: 2e-7).
FAISS_ROUNDING = 1e-5
# Batches up to this many images go through LiteRT (one thread, the calling one), larger ones
# through TensorFlow, which spreads a batch over every core: bulk indexing's wall time.
LITE_ROWS = 64


class Embedder:
    """Load once, embed many: `Embedder.load(dir).embed([...])` -> float32 (N, D).

    All images go through `images.prepare_batch` (driven by the card) and one compiled TensorFlow
    function, in batches; one image costs about a millisecond, not the ~100 ms of `model.predict`.
    A service's embedder (`lite=True`) runs its small batches in LiteRT instead: 0.4 ms an image.
    """

    def __init__(self, model, card: ModelCard, batch_size: int = 256, domain=None,
                 lite: bool = False):
        import tensorflow as tf

        from .models import featureless_embeddings  # Keras, once a model is there to embed with

        self.model = model
        self.card = card
        self.batch_size = batch_size
        self.directory: Optional[Path] = None  # the model directory it was loaded from, if any
        self.domain = domain  # a `domain.DomainModel`, or None for a card without one
        self.verdicts = Verdicts(card)
        self.featureless = featureless_embeddings(model)
        # The featureless points' squared norms, for `may_be_featureless`: every search asks.
        self._featureless_norms = np.sum(np.square(self.featureless.astype(np.float64)), axis=1)
        # Called as a concrete function: the polymorphic wrapper's argument checks cost ~0.3 ms
        # a call, a third of embedding one image.
        spec = [tf.TensorSpec((None, *card.preprocessing.shape), tf.uint8)]
        self._forward = tf.function(lambda x: model(x, training=False),
                                    input_signature=spec).get_concrete_function()
        # The encoder and the domain check in one compiled call, and concurrent callers' images
        # in one batch (`batcher.Batcher`): what a service's requests go through.
        self._both = None if domain is None else tf.function(
            lambda x: (model(x, training=False), domain.model(x, training=False)[:, 0]),
            input_signature=spec).get_concrete_function()
        # `lite`: the batcher's calls (up to LITE_ROWS images) run the same graph in LiteRT, for a
        # service: per image a third of the CPU at one image, no more at 64 (docs/results.md).
        # Converting takes ~0.4 s, more than a command that embeds a few images gains.
        self.lite = None
        if lite:
            try:
                self.lite = _Lite(self._both or self._forward,
                                  [model] + ([domain.model] if domain else []))
            except ImportError:  # no LiteRT wheel for this platform (Windows): TensorFlow it is
                log.warning("model %s: ai-edge-litert is not installed, so its small batches "
                            "run in TensorFlow (about 3 times the CPU a request)", card.model_id)
        self.batcher = Batcher(self._embed_and_score, max_rows=LITE_ROWS)
        self._op_error = tf.errors.OpError

    @classmethod
    def load(cls, path: Union[str, os.PathLike], batch_size: int = 256, lite: bool = False
             ) -> "Embedder":
        from .domain import load_domain_model

        model, card = load_model(path)
        domain = None if card.domain is None else \
            load_domain_model(path, card.domain, card.preprocessing)
        embedder = cls(model, card, batch_size, domain, lite)
        embedder.directory = Path(path).resolve()
        return embedder

    @property
    def model_id(self) -> str:
        return self.card.model_id

    @property
    def threshold(self) -> float:
        """The best-accuracy threshold calibrated on held-out pairs (operating point
        "balanced"); `verdicts` has the others and decides."""
        return self.card.threshold

    @property
    def embedding_dim(self) -> int:
        return self.card.embedding_dim

    def prepare(self, images: Union[np.ndarray, Sequence[ImageSource], Iterable[ImageSource]]
                ) -> np.ndarray:
        return prepare_batch(images, self.card.preprocessing)

    def embed_prepared(self, batch: np.ndarray) -> np.ndarray:
        """Embeddings of model-ready uint8 input (from `prepare`)."""
        out = np.empty((len(batch), self.embedding_dim), np.float32)
        for start in range(0, len(batch), self.batch_size):
            out[start:start + self.batch_size] = self._forward(batch[start:start + self.batch_size])
        return out

    def embed(self, images: Images) -> np.ndarray:
        """Embeddings, float32 (N, D), of file paths, bytes, PIL images or a uint8 array
        (N, H, W) / (N, H, W, C). Sizes and colour modes are converted as the card says."""
        return self.embed_prepared(self.prepare(images))

    # --- the input-domain check ----------------------------------------------------------------

    @property
    def has_domain_model(self) -> bool:
        return self.domain is not None

    def domain_score(self, images: Images) -> np.ndarray:
        """How much each image looks like the model's training data (a logit; higher: more).
        A model without a domain model raises `ModelError`."""
        return self.domain_score_prepared(self.prepare(images))

    def domain_score_prepared(self, batch: np.ndarray) -> np.ndarray:
        if self.domain is None:
            raise ModelError(f"model {self.model_id} has no domain model (trained before the "
                             "domain check; siamese-calibrate adds one)")
        return self.domain.score(batch)

    def in_domain(self, images: Images) -> np.ndarray:
        """True for each image that looks like the model's training data and in which the
        encoder finds features (`is_featureless`)."""
        if self.domain is None:
            raise ModelError(f"model {self.model_id} has no domain model (trained before the "
                             "domain check; siamese-calibrate adds one)")
        vectors, scores = self.embed_and_score_prepared(self.prepare(images))
        return (scores >= self.card.domain.threshold) & ~self.is_featureless(vectors)

    def embed_checked(self, images: Images) -> tuple[np.ndarray, list[DomainCheck]]:
        """Embeddings and each image's domain check, from one preprocessing pass."""
        return self.embed_checked_prepared(self.prepare(images))

    def embed_checked_prepared(self, batch: np.ndarray) -> tuple[np.ndarray, list[DomainCheck]]:
        vectors, scores = self.embed_and_score_prepared(batch)
        return vectors, self.verdicts.domain_checks(scores, len(batch), self.is_featureless(vectors))

    def embed_and_score_prepared(self, batch: np.ndarray
                                 ) -> tuple[np.ndarray, Optional[np.ndarray]]:
        """Embeddings and domain scores (None without a domain model) of model-ready input, from
        one compiled call for both; concurrent callers' small batches go in one (`batcher`)."""
        vectors, *scores = self.batcher(batch)
        return vectors, scores[0] if scores else None

    def _embed_and_score(self, batch: np.ndarray) -> tuple[np.ndarray, ...]:
        """(embeddings,) or (embeddings, domain scores) of model-ready input, one compiled call a
        `batch_size` chunk."""
        try:
            if self.lite is not None and len(batch) <= LITE_ROWS:
                return self.lite(batch)
            if self._both is None:
                return (self.embed_prepared(batch),)
            vectors = np.empty((len(batch), self.embedding_dim), np.float32)
            scores = np.empty(len(batch), np.float32)
            for start in range(0, len(batch), self.batch_size):
                v, s = self._both(batch[start:start + self.batch_size])
                vectors[start:start + len(v)] = v
                scores[start:start + len(s)] = s
            return vectors, scores
        except self._op_error as exc:  # out of memory, a kernel that failed: 503, not 500
            raise ModelError(f"the model call failed ({type(exc).__name__}: "
                             f"{exc.message[:200]}); try again") from None

    def is_featureless(self, vectors: np.ndarray) -> np.ndarray:
        """True for each embedding that is one of the model's featureless points: the model found
        nothing in that image, and gives every such image the same embedding."""
        return self.featureless_distance(vectors) < FEATURELESS_GAP

    def featureless_distance(self, vectors: np.ndarray) -> np.ndarray:
        """Each embedding's distance to the nearest featureless point (inf without any, and for
        embeddings of the wrong shape, which the caller refuses later)."""
        vectors = np.asarray(vectors, np.float32)
        if not len(self.featureless) or vectors.ndim != 2 or vectors.shape[1] != self.embedding_dim:
            return np.full(len(vectors), np.inf)
        # Differences, not pairwise's expansion: its float32 rounding is ~3e-4, over the gap.
        return _distance.euclidean(vectors[:, None, :], self.featureless[None]).min(axis=1)

    def may_be_featureless(self, queries: np.ndarray, distances: np.ndarray) -> np.ndarray:
        """For FAISS's distances (N, K) from each of `queries` (N, D) to K points (a search's
        matches): False where the point cannot be a featureless point. A point within the gap
        of featureless point f is as far from the query as f is, give or take the gap (the
        triangle inequality), so |d² - e²| <= (2e + gap) gap, with e the query's distance to f,
        plus FAISS's rounding. Only the rest need `is_featureless` on the point itself
        (`python -m scripts.measure_featureless` counts them)."""
        d2 = np.square(np.asarray(distances, np.float64))
        if not len(self.featureless) or not d2.size:
            return np.zeros(d2.shape, bool)
        q = np.asarray(queries, np.float64)
        e = _distance.euclidean(q[:, None, :], self.featureless[None]).astype(np.float64)  # (N, P)
        slack = ((2 * e + FEATURELESS_GAP) * FEATURELESS_GAP
                 + FAISS_ROUNDING * (np.sum(q * q, 1)[:, None] + self._featureless_norms[None]))
        return (np.abs(d2[:, :, None] - np.square(e)[:, None, :]) <= slack[:, None, :]).any(axis=2)

    def verify(self, a: ImageSource, b: ImageSource, operating_point: Optional[str] = None,
               threshold: Optional[float] = None, rule: Optional[Rule] = None) -> Verdict:
        """Are `a` and `b` the same? At the named operating point or threshold ("balanced" by
        default), or under a `rule` already made (a gallery's); never verified when either image
        is out of the model's domain."""
        if rule is None:
            rule = self.verdicts.rule(operating_point, threshold)
        return self.verify_pairs([(a, b)], rule)[0]

    def verify_pairs(self, pairs: Sequence[tuple[ImageSource, ImageSource]], rule: Rule
                     ) -> list[Verdict]:
        """`verify` for many pairs under one rule, their images embedded in one batch."""
        vectors, checks = self.embed_checked([image for pair in pairs for image in pair])
        distances = self.distance(vectors[0::2], vectors[1::2])
        return [self.verdicts.judge(d, rule, DomainCheck.both(a, b))[0]
                for d, a, b in zip(distances, checks[0::2], checks[1::2])]

    @staticmethod
    def distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Euclidean distance between embeddings, row-wise (broadcasts (D,) against (N, D))."""
        return _distance.euclidean(a, b)


class _Lite:
    """A compiled call (uint8 images -> float32 outputs) converted to a LiteRT interpreter:
    `_Lite(fn, models)(batch)` -> the same outputs as `fn(batch)`, as NumPy arrays, within float
    rounding (1.5e-7 in embeddings, 6e-6 in domain logits, measured on both bundled models).
    TensorFlow spends ~0.5 ms of Python and ~0.4 ms of scheduling on each call of a small model;
    LiteRT's interpreter runs it on the calling thread with the GIL released. One interpreter,
    resized to each batch (a few microseconds), so calls are serialised."""

    def __init__(self, fn, models, threads: int = 1) -> None:
        import tensorflow as tf
        from ai_edge_litert.interpreter import Interpreter

        from .quiet import LITE_NOISE, filtered_stderr, quiet_loggers

        holder = tf.Module()  # the variables the converter freezes into the flat model
        holder.variables_ = [w.value for m in models for w in m.weights]
        with filtered_stderr(LITE_NOISE), quiet_loggers("absl", "tensorflow"):
            content = tf.lite.TFLiteConverter.from_concrete_functions([fn], holder).convert()
            self.interpreter = Interpreter(model_content=content, num_threads=threads)
            self.interpreter.allocate_tensors()
        self.input = self.interpreter.get_input_details()[0]["index"]
        self.shape = tuple(self.interpreter.get_input_details()[0]["shape"][1:])
        # (N, D) embeddings first, then (N,) scores: the order of `fn`'s outputs.
        details = sorted(self.interpreter.get_output_details(), key=lambda d: -len(d["shape"]))
        self.outputs = [d["index"] for d in details]
        self.rows = 1
        self.lock = threading.Lock()

    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, ...]:
        with self.lock:
            if len(batch) != self.rows:
                self.interpreter.resize_tensor_input(self.input, (len(batch), *self.shape))
                self.interpreter.allocate_tensors()
                self.rows = len(batch)
            self.interpreter.set_tensor(self.input, np.ascontiguousarray(batch, np.uint8))
            self.interpreter.invoke()
            return tuple(self.interpreter.get_tensor(i) for i in self.outputs)

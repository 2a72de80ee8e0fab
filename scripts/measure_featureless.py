"""Measure what the featureless check does (the numbers in docs/trust.md): how many real images
the encoder finds no features in (its head all silent, the embedding its biases alone), how many
of them the domain model takes for in-domain, and the false accepts among image pairs of
different labels with and without the check, at each operating point.

    python -m scripts.measure_featureless --model models/fashion-mnist \\
        --dataset fashion-mnist datasets/fashion-mnist --split test --images 10000

Each set is measured as it is and under the training's affine distortion (one draw per image,
seeded): a new photo of a known item is rarely framed like the training images.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from scripts.common import add_dataset_argument, run

NEAR = 0.1  # "near a featureless point": within this distance of one


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m scripts.measure_featureless", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    add_dataset_argument(p)
    p.add_argument("--split", default="test", help="the dataset's split (default: %(default)s)")
    p.add_argument("--images", type=int, default=10_000, help="images measured (default: "
                                                               "%(default)s)")
    p.add_argument("--seed", type=int, default=0)
    return p


def false_accepts(vectors: np.ndarray, labels: np.ndarray, accepted: np.ndarray,
                  thresholds: dict[str, float], chunk: int = 1000) -> tuple[dict[str, int], int]:
    """Pairs of different labels within each threshold, both images `accepted`; and the pairs of
    different labels that are judged at all (both accepted)."""
    from encoder.distance import pairwise

    counts, judged = dict.fromkeys(thresholds, 0), 0
    for start in range(0, len(vectors), chunk):
        block = vectors[start:start + chunk]
        d = pairwise(block, vectors)
        rows = np.arange(start, start + len(block))
        pair = (labels[rows][:, None] != labels[None]) & (rows[:, None] < np.arange(len(vectors)))
        pair &= accepted[rows][:, None] & accepted[None]
        judged += int(pair.sum())
        for name, t in thresholds.items():
            counts[name] += int((pair & (d <= t)).sum())
    return counts, judged


def identification_thresholds(embedder, vectors: np.ndarray, blank: np.ndarray) -> str:
    """The 1:N thresholds read from these images' nearest impostors (each image its own
    identity, every image used; `Gallery.nearest_impostors` samples up to 5,000), with the
    featureless images counted, and left out as galleries do since 2026-12-03."""
    from encoder.verdict import nearest_impostors

    parts = []
    for name, keep in (("counted", np.ones(len(vectors), bool)), ("left out", ~blank)):
        impostors = nearest_impostors(vectors[keep], list(range(int(keep.sum()))))
        rules = [embedder.verdicts.identification_rule(int(keep.sum()), fpir,
                                                       impostors=impostors)
                 for fpir in (0.01, 0.001)]
        parts.append(f"{name}: " + " / ".join(f"{r.threshold:.4f} ({r.basis})" for r in rules))
    return ("1:N thresholds at FPIR 0.01 / 0.001, each image its own identity, featureless "
            "images " + "; ".join(parts))


def search_reads(embedder, vectors: np.ndarray, k: int = 8) -> str:
    """How many matches a gallery search reads back to check for featurelessness
    (`Embedder.may_be_featureless`), searching each image's `k` nearest among the others with
    FAISS, and what the filter costs per single-image search."""
    import faiss

    from encoder.distance import from_squared

    index = faiss.IndexFlatL2(vectors.shape[1])
    index.add(vectors)
    squared, ids = index.search(vectors, k + 1)
    others = ids != np.arange(len(vectors))[:, None]  # each image itself left out
    others &= np.cumsum(others, axis=1) <= k  # (behind its duplicates, it may not come first)
    distances = np.where(others, from_squared(squared), np.inf)
    maybe = embedder.may_be_featureless(vectors, distances) & others
    blank = embedder.is_featureless(vectors)[np.where(ids >= 0, ids, 0)] & others
    runs = 2000
    start = time.perf_counter()
    for i in range(runs):
        row = i % len(vectors)
        embedder.may_be_featureless(vectors[row][None], distances[row][None])
    each = (time.perf_counter() - start) / runs
    return (f"searching each image's {k} nearest among the others: {maybe.sum():,} of "
            f"{others.sum():,} matches ({maybe.sum() / others.sum():.2%}) in "
            f"{maybe.any(axis=1).sum():,} of {len(vectors):,} searches "
            f"({maybe.any(axis=1).mean():.2%}) read back, {(maybe & blank).sum():,} of them "
            f"featureless ({(blank & ~maybe).sum()} missed); the filter takes "
            f"{1e6 * each:.0f} us per search (1 image, k={k})")


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    from encoder import Embedder
    from encoder.augment import Augmenter
    from encoder.datasets import load_dataset
    from encoder.distance import pairwise
    from encoder.errors import ConfigError

    if args.images < 2:
        raise ConfigError(f"--images must be at least 2 (pairs are measured), not {args.images}")

    embedder = Embedder.load(args.model)
    ds = load_dataset(args.dataset[0], args.dataset[1:], split=args.split,
                      pre=embedder.card.preprocessing)
    rng = np.random.default_rng(args.seed)
    pick = np.sort(rng.permutation(len(ds.images))[:args.images])
    images, labels = embedder.prepare(ds.images[pick]), np.asarray(ds.labels)[pick]
    thresholds = dict(embedder.verdicts.operating_points)
    n_pairs = int((labels[:, None] != labels[None]).sum() // 2)
    print(f"model {embedder.model_id}, {len(images):,} {args.split} images of "
          f"{len(set(labels.tolist()))} labels, {n_pairs:,} pairs of different labels")
    print("False accepts: pairs of different labels within the operating point's threshold, both "
          "images in domain; the rate is among the pairs of different labels judged (both in "
          "domain).")
    header = (f"| set | featureless | of them in domain | near one (<{NEAR}) | operating point | "
              "false accepts without the check | with it | of them with an image near one | "
              "pairs of a featureless image and one judged, within it |")
    print(header + "\n|" + "---|" * (header.count("|") - 1))
    costs = []  # (the check, embedding), in seconds, per set
    reads = []  # what searches read back, per set
    for name, batch in (("as they are", images),
                        ("affine-distorted", Augmenter("affine", args.seed)(images).numpy())):
        start = time.perf_counter()
        vectors = embedder.embed_prepared(batch)
        embedding = time.perf_counter() - start
        scores = embedder.domain_score_prepared(batch)
        start = time.perf_counter()
        blank = embedder.is_featureless(vectors)
        costs.append((time.perf_counter() - start, embedding))
        near = embedder.featureless_distance(vectors) < NEAR
        before = np.array([c.in_domain is not False for c in
                           embedder.verdicts.domain_checks(scores, len(batch))])
        after = before & ~blank
        (without, judged_without), (with_, judged_with), (far_from, _) = (
            false_accepts(vectors, labels, a, thresholds) for a in (before, after, after & ~near))
        # What a search verified when only the query was checked, not the gallery item.
        beside = pairwise(vectors[blank], vectors[after])
        reads.append(f"{name}: {search_reads(embedder, vectors)}")
        reads.append(f"{name}: {identification_thresholds(embedder, vectors, blank)}")
        for point in thresholds:
            print(f"| {name} | {blank.sum():,} ({blank.mean():.2%}) | {(blank & before).sum():,} "
                  f"| {near.sum():,} | {point} | {without[point]:,} "
                  f"({without[point] / max(judged_without, 1):.2e}) | {with_[point]:,} "
                  f"({with_[point] / max(judged_with, 1):.2e}) | "
                  f"{with_[point] - far_from[point]:,} | "
                  f"{int((beside <= thresholds[point]).sum()):,} |")
    print("\n".join(reads))
    check, embedding = min(costs)
    print(f"the check took {1000 * check:.1f} ms for {len(images):,} embeddings, "
          f"{check / embedding:.2%} of the time to embed them")
    return 0


if __name__ == "__main__":
    run(main)

"""siamese-evaluate: measure a model on a test set (pair verification and retrieval)."""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from scripts.common import add_dataset_argument, run


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="siamese-evaluate", description=__doc__ + " Pairs follow the tutorial's protocol "
        "(one positive and one negative pair per image, seeded); retrieval queries every image "
        "against all the others.",
        epilog="example: siamese-evaluate --model models/fashion-mnist "
               "--dataset fashion-mnist ../shared/datasets/fashion-mnist --plots runs/plots")
    p.add_argument("--model", required=True, help="model directory (model.keras + card.json)")
    add_dataset_argument(p)
    p.add_argument("--split", default="test", choices=["test", "train"],
                   help="Fashion-MNIST split to evaluate on (default: %(default)s)")
    p.add_argument("--seed", type=int, default=20261128, help="seed of the test pairs")
    p.add_argument("--threshold", type=float, help="override the card's threshold")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--plots", metavar="DIR", help="write roc.png, distances.png and pairs.png here")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from encoder import Embedder
    from encoder.datasets import load_dataset
    from encoder.evaluation import pair_metrics, retrieval_metrics

    embedder = Embedder.load(args.model)
    ds = load_dataset(args.dataset[0], args.dataset[1:], split=args.split,
                      pre=embedder.card.preprocessing)
    ds.check_trainable()
    start = time.perf_counter()
    embeddings = embedder.embed(ds.images)
    embed_seconds = time.perf_counter() - start
    threshold = embedder.threshold if args.threshold is None else args.threshold
    pairs = pair_metrics(embeddings, ds.labels, threshold, args.seed)
    results = {"model": embedder.model_id, "dataset": ds.name, "images": len(ds),
               "classes": ds.num_classes, "seed": args.seed, **pairs.metrics,
               **retrieval_metrics(embeddings, ds.labels),
               "embed_images_per_second": round(len(ds) / embed_seconds)}
    if ds.skipped:
        results["skipped_files"] = len(ds.skipped)
    if args.plots:
        from encoder import plots

        out = Path(args.plots)
        out.mkdir(parents=True, exist_ok=True)
        results["plots"] = [str(p) for p in (
            plots.roc_curve(pairs.distances, pairs.same, pairs.metrics["roc_auc"], out / "roc.png"),
            plots.distance_histograms(pairs.distances, pairs.same, threshold, out / "distances.png"),
            plots.pair_grid(ds.images, pairs.first, pairs.second, pairs.same, pairs.distances,
                            threshold, out / "pairs.png", seed=args.seed))]
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for key, value in results.items():
            shown = f"{value:.4f}" if isinstance(value, float) else value
            print(f"{key:>26}  {shown}")
    return 0


def entry() -> None:
    run(main)


if __name__ == "__main__":
    entry()

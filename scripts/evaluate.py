"""siamese-evaluate: measure a model on a test set (pair verification, retrieval and, with
--oneshot, N-way K-shot classification)."""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from encoder.errors import ConfigError, DatasetError
from encoder.evaluation import EPISODE_CLASSES
from scripts.common import add_class_arguments, add_dataset_argument, choose_classes, run


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="siamese-evaluate", description=__doc__ + " Pairs follow the tutorial's protocol "
        "(one positive and one negative pair per image, seeded); retrieval queries every image "
        "against all the others. With groups in the data (Omniglot alphabets) only the groups the "
        "model never trained on are used unless --groups says otherwise.",
        epilog="example: siamese-evaluate --model models/fashion-mnist "
               "--dataset fashion-mnist ../shared/datasets/fashion-mnist --plots runs/plots")
    p.add_argument("--model", required=True, help="model directory (model.keras + card.json)")
    add_dataset_argument(p)
    add_class_arguments(p, "to evaluate on; with either flag every group is used unless --groups "
                           "says otherwise")
    p.add_argument("--split", default="test", choices=["test", "train"],
                   help="Fashion-MNIST split to evaluate on (default: %(default)s)")
    p.add_argument("--seed", type=int, default=20261128, help="seed of the test pairs")
    p.add_argument("--pair-rounds", type=int, default=1, metavar="R",
                   help="draw the test pairs R times (seeds SEED, SEED+1, ...): 2R pairs per "
                        "image, for small test sets whose accuracy a single draw leaves a point "
                        "or so to chance (default: %(default)s, the tutorial's protocol)")
    p.add_argument("--threshold", type=float, help="override the card's threshold")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--plots", metavar="DIR", help="write roc.png, distances.png and pairs.png here")
    p.add_argument("--oneshot", type=int, nargs="+", metavar="N",
                   help="also N-way one-shot accuracy: episodes of N classes, K reference images "
                        "each (--shots) and one query per class; a query takes the class of the "
                        "nearest reference (nearest class mean when K > 1). Several N may be given")
    p.add_argument("--shots", type=int, default=1, metavar="K",
                   help="reference images per class in an episode (default: %(default)s)")
    p.add_argument("--episodes", type=int, default=1000,
                   help="episodes per N (default: %(default)s), drawn with --seed")
    p.add_argument("--episode-classes", choices=EPISODE_CLASSES,
                   help="group: each episode's classes come from one group (Omniglot: one "
                        "alphabet, Lake et al.'s harder protocol); any: from the whole data. "
                        "Default: group when the data has groups, else any")
    p.add_argument("--groups", metavar="all|NAME,NAME",
                   help="groups (Omniglot alphabets) to evaluate on. Default: those the model "
                        "did not train on, as its card records (all of them for a model trained "
                        "on other data)")
    return p


def choose_groups(ds, card, wanted: str | None):
    """The part of a dataset with groups to evaluate on, and why: by default the groups the
    model never trained on (its card lists the ones it did)."""
    if wanted is not None and ds.groups is None:
        raise DatasetError(f"--groups: {ds.name} has no groups (alphabets)")
    if ds.groups is None or wanted == "all":
        return ds, "all"
    if wanted:
        names = [n.strip() for n in wanted.split(",") if n.strip()]
        return ds.select_groups(names), "chosen"
    seen = set(card.training.get("groups", []))
    unseen = [g for g in ds.groups_present() if g not in seen]
    if not unseen:
        raise DatasetError(f"the model trained on every group (alphabet) in {ds.name}; give other "
                           "data, or --groups all (or names) to evaluate on groups it has seen")
    return ds.select_groups(unseen), "not seen in training" if seen else "all"


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from encoder import Embedder
    from encoder.datasets import load_dataset
    from encoder.evaluation import oneshot_accuracy, pair_metrics, retrieval_metrics

    if args.pair_rounds < 1:
        raise ConfigError(f"--pair-rounds must be at least 1, not {args.pair_rounds}")
    embedder = Embedder.load(args.model)
    ds = load_dataset(args.dataset[0], args.dataset[1:], split=args.split,
                      pre=embedder.card.preprocessing)
    by_name = args.classes is not None or args.exclude_classes is not None
    # Classes chosen by name: every group they are in, unless --groups says otherwise.
    groups = "all" if by_name and args.groups is None and ds.groups is not None else args.groups
    ds, which_groups = choose_groups(choose_classes(ds, args), embedder.card, groups)
    ds.check_trainable()
    start = time.perf_counter()
    embeddings = embedder.embed(ds.images)
    embed_seconds = time.perf_counter() - start
    threshold = embedder.threshold if args.threshold is None else args.threshold
    pairs = pair_metrics(embeddings, ds.labels, threshold, args.seed, rounds=args.pair_rounds)
    results = {"model": embedder.model_id, "dataset": ds.name, "images": len(ds),
               "classes": ds.num_classes, **group_summary(ds, which_groups),
               "seed": args.seed, **pairs.metrics,
               **retrieval_metrics(embeddings, ds.labels),
               "embed_images_per_second": round(len(ds) / embed_seconds)}
    if ds.skipped:
        results["skipped_files"] = len(ds.skipped)
    oneshot = []
    if args.oneshot:
        if args.episode_classes == "group" and ds.groups is None:
            raise DatasetError(f"--episode-classes group: {ds.name} has no groups (alphabets)")
        within = (args.episode_classes or ("group" if ds.groups is not None else "any")) == "group"
        oneshot = [oneshot_accuracy(embeddings, ds.labels, way, args.shots, args.episodes,
                                    args.seed, ds.groups if within else None)
                   for way in args.oneshot]
        results["oneshot"] = [r.to_dict() for r in oneshot]
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
            if key == "oneshot":
                continue
            shown = f"{value:.4f}" if isinstance(value, float) else value
            print(f"{key:>26}  {', '.join(shown) if isinstance(shown, list) else shown}")
        for r in oneshot:
            print(f"{'one-shot':>26}  {r}")
    return 0


def group_summary(ds, which: str) -> dict:
    if ds.groups is None:
        return {}
    return {"groups": ds.groups_present(), "groups_chosen": which}


def entry() -> None:
    run(main)


if __name__ == "__main__":
    entry()

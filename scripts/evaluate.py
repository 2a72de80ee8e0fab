"""siamese-evaluate: measure a model on a test set (pair verification at the card's operating
points, probability calibration, the domain check, retrieval and, with --oneshot, N-way K-shot
classification; with --open-set, open-set 1:N identification)."""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from encoder.errors import DatasetError
from encoder.evaluation import EPISODE_CLASSES
from encoder.params import Range, check_value
from scripts.common import add_class_arguments, add_dataset_argument, choose_classes, run


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="siamese-evaluate", description=__doc__ + " Pairs follow the tutorial's protocol "
        "(one positive and one negative pair per image, seeded); retrieval queries every image "
        "against all the others. With groups in the data (Omniglot alphabets) only the groups the "
        "model never trained on are used unless --groups says otherwise.",
        epilog="example: siamese-evaluate --model models/fashion-mnist "
               "--dataset fashion-mnist datasets/fashion-mnist --plots runs/plots")
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
    p.add_argument("--plots", metavar="DIR",
                   help="write roc.png, det.png, distances.png and pairs.png here (and "
                        "open_set_det.png with --open-set)")
    p.add_argument("--oneshot", type=int, nargs="+", metavar="N",
                   help="also N-way one-shot accuracy: episodes of N classes, K reference images "
                        "each (--shots) and one query per class; a query takes the class of the "
                        "nearest reference (nearest class mean when K > 1). Several N may be given")
    p.add_argument("--shots", type=int, default=1, metavar="K",
                   help="reference images per class in an episode, and enrolled images per "
                        "class with --open-set (default: %(default)s)")
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
    p.add_argument("--open-set", action="store_true",
                   help="also open-set 1:N identification: per round, --enrolled classes enrol "
                        "--shots images each (the gallery); their other images are probes that "
                        "should be identified, every image of the other classes a probe that "
                        "should match nobody. Reports rank-1/rank-5 identification, FNIR at FPIR "
                        "0.01/0.05/0.1, and the FPIR measured at the threshold the card predicts "
                        "for that gallery size")
    p.add_argument("--enrolled", type=int, metavar="N",
                   help="classes enrolled per open-set round (default: half of them)")
    p.add_argument("--open-set-rounds", type=int, default=10, metavar="R",
                   help="open-set rounds, each a fresh seeded deal of the classes (default: "
                        "%(default)s)")
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
    from encoder.evaluation import pair_metrics, retrieval_metrics

    check_value("--pair-rounds", args.pair_rounds, Range(1, integer=True))
    if args.open_set:
        check_value("--open-set-rounds", args.open_set_rounds, Range(1, integer=True))
        check_value("--enrolled", args.enrolled, Range(2, integer=True))
        check_value("--shots", args.shots, Range(1, integer=True))
    embedder, ds, which_groups = _load(args)
    start = time.perf_counter()
    embeddings, checks = embedder.embed_checked(ds.images)
    embed_seconds = time.perf_counter() - start
    in_domain = (np.array([c.in_domain is not False for c in checks])
                 if embedder.has_domain_model else None)
    threshold = embedder.threshold if args.threshold is None else args.threshold
    pairs = pair_metrics(embeddings, ds.labels, threshold, args.seed, rounds=args.pair_rounds)
    results = {"model": embedder.model_id, "dataset": ds.name, "images": len(ds),
               "classes": ds.num_classes, **group_summary(ds, which_groups),
               "seed": args.seed, **pairs.metrics,
               **retrieval_metrics(embeddings, ds.labels),
               "embed_images_per_second": round(len(ds) / embed_seconds)}
    if ds.skipped:
        results["skipped_files"] = len(ds.skipped)
    results.update(_trust(embedder, ds, pairs, embeddings, in_domain, args.seed))
    open_set = (_open_set(args, embedder, embeddings, ds.labels, in_domain) if args.open_set
                else None)
    if open_set is not None:
        results["open_set"] = open_set
    oneshot = _oneshot(args, embeddings, ds) if args.oneshot else []
    if oneshot:
        results["oneshot"] = [r.to_dict() for r in oneshot]
    if args.plots:
        results["plots"] = _plots(Path(args.plots), embedder, ds, pairs, threshold, open_set,
                                  args.seed)
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    for key, value in results.items():
        if key in STRUCTURED:
            continue
        shown = f"{value:.4f}" if isinstance(value, float) else value
        print(f"{key:>26}  {', '.join(shown) if isinstance(shown, list) else shown}")
    for r in oneshot:
        print(f"{'one-shot':>26}  {r}")
    print()
    print("\n".join(trust_lines(results, embedder.model_id)))
    if open_set is not None:
        print()
        print("\n".join(open_set_lines(open_set)))
    return 0


def _load(args):
    """The model, and the dataset with the classes and groups the flags choose."""
    from encoder import Embedder
    from encoder.datasets import load_dataset

    embedder = Embedder.load(args.model)
    ds = load_dataset(args.dataset[0], args.dataset[1:], split=args.split,
                      pre=embedder.card.preprocessing)
    by_name = args.classes is not None or args.exclude_classes is not None
    # Classes chosen by name: every group they are in, unless --groups says otherwise.
    groups = "all" if by_name and args.groups is None and ds.groups is not None else args.groups
    ds, which_groups = choose_groups(choose_classes(ds, args), embedder.card, groups)
    ds.check_trainable()
    return embedder, ds, which_groups


def _trust(embedder, ds, pairs, embeddings, in_domain, seed: int) -> dict:
    """The verdict's numbers measured on this data: its operating points on every distinct pair
    of the test images (by distance, and as the service answers with the domain check), TAR at
    FAR, the probability's calibration error and the domain check's rejections."""
    from encoder.calibration import HeldOutPairs, expected_calibration_error
    from encoder.evaluation import operating_point_metrics, tar_at_far

    card = embedder.card
    # A model trained on held-out images of its own classes (an image split) meets the same
    # classes again: the intervals then resample images only, not classes.
    new_classes = card.training.get("settings", {}).get("val_split") != "image"
    distinct = HeldOutPairs.of(embeddings, ds.labels, seed, new_classes=new_classes)
    results = {"operating_points": operating_point_metrics(
        distinct, embedder.verdicts.operating_points, card.operating_points,
        in_domain=in_domain, seed=seed),
        "tar_at_far": tar_at_far(distinct.distances, distinct.same)}
    results["probability"] = None if card.probability is None else {
        "ece": expected_calibration_error(card.probability(distinct.distances), distinct.same),
        "card_ece": card.probability.ece}
    results["domain"] = None
    if in_domain is not None:
        rejected = ~in_domain
        results["domain"] = {"rejected": float(np.mean(rejected)),
                             "rejected_images": int(rejected.sum()), "images": len(ds),
                             "card_heldout_rejected": card.domain.heldout_rejected,
                             "card_weak": list(card.domain.weak)}
    return results


def _open_set(args, embedder, embeddings, labels, in_domain) -> dict:
    """Open-set 1:N measured at the thresholds `identify` would take (`predicted`), also as the
    service answers with the domain check (`predicted_service`), and at the card's alone
    (`predicted_by_card`)."""
    from encoder.evaluation import open_set_identification
    from encoder.verdict import nearest_impostors

    card = embedder.card

    def as_identify(fpir, size, gallery, gallery_labels):
        """The threshold `Gallery.identify` would take for this gallery."""
        rule = embedder.verdicts.identification_rule(
            size, fpir, impostors=nearest_impostors(gallery, gallery_labels),
            identities=len(np.unique(gallery_labels)))
        return rule.threshold, rule.calibrated

    def by_card(fpir, size, gallery, gallery_labels):
        identities = len(np.unique(gallery_labels))
        return card.open_set.threshold_for(fpir, identities, size / identities)

    def run_open_set(predict, usable=None):
        return open_set_identification(embeddings, labels, args.enrolled, args.shots,
                                       args.open_set_rounds, args.seed, predict, usable=usable)

    open_set = run_open_set(as_identify)
    open_set["predicted_service"] = (None if in_domain is None else
                                     run_open_set(as_identify, in_domain)["predicted"])
    open_set["predicted_by_card"] = (None if card.open_set is None else
                                     run_open_set(by_card)["predicted"])
    return open_set


def _oneshot(args, embeddings, ds) -> list:
    from encoder.evaluation import oneshot_accuracy

    if args.episode_classes == "group" and ds.groups is None:
        raise DatasetError(f"--episode-classes group: {ds.name} has no groups (alphabets)")
    within = (args.episode_classes or ("group" if ds.groups is not None else "any")) == "group"
    return [oneshot_accuracy(embeddings, ds.labels, way, args.shots, args.episodes, args.seed,
                             ds.groups if within else None) for way in args.oneshot]


def _plots(out: Path, embedder, ds, pairs, threshold: float, open_set, seed: int) -> list[str]:
    from encoder import plots

    out.mkdir(parents=True, exist_ok=True)
    points, card = embedder.verdicts.operating_points, embedder.card
    written = [
        plots.roc_curve(pairs.distances, pairs.same, pairs.metrics["roc_auc"], out / "roc.png"),
        plots.det_curve(pairs.distances, pairs.same, points, out / "det.png", card.operating_points),
        plots.distance_histograms(pairs.distances, pairs.same, threshold, out / "distances.png"),
        plots.pair_grid(ds.images, pairs.first, pairs.second, pairs.same, pairs.distances,
                        threshold, out / "pairs.png", seed=seed)]
    if open_set is not None:
        written.append(plots.open_set_det(open_set, out / "open_set_det.png"))
    return [str(p) for p in written]


STRUCTURED = ("oneshot", "operating_points", "tar_at_far", "probability", "domain", "open_set")


def _rate(value: float, ci=None) -> str:
    return f"{value:.4f}" + ("" if ci is None else f" [{ci[0]:.4f}, {ci[1]:.4f}]")


def trust_lines(results: dict, model_id: str) -> list[str]:
    """The verdict's measurements as text: operating points (by distance, and as the service
    answers), TAR@FAR, probability, domain."""
    from scripts.table import format_table

    points = results["operating_points"]
    service = "service_tar" in next(iter(points.values()))

    def card_far(p) -> str:
        if p["card_far"] is None:
            return "-"
        return (f"{p['card_far']:.4f}" + ("" if p["card_calibrated"] else " (not calibrated)")
                + (" ABOVE" if p["far_above_card"] else ""))

    rows = [[name, f"{p['threshold']:.4f}", _rate(p["tar"], p["tar_ci95"]),
             _rate(p["far"], p["far_ci95"]),
             *([f"{p['service_tar']:.4f}", f"{p['service_far']:.4f}"] if service else []),
             "-" if p["card_tar"] is None else f"{p['card_tar']:.4f}", card_far(p)]
            for name, p in points.items()]
    first = next(iter(points.values()))
    lines = [f"operating points on every distinct pair of the test images "
             f"({first['positives']:,} same-class, {first['negatives']:,} different-class, "
             f"{first['classes']} classes; 95% intervals over resampled {first['resampled']})"
             + (", by distance and as the service answers (the domain check applied: a pair "
                "with an image out of domain is never verified):" if service else ":"),
             format_table(["point", "threshold", "TAR [95% CI]", "FAR [95% CI]",
                           *(["service TAR", "service FAR"] if service else []), "card TAR",
                           "card FAR"], rows)]
    above = [name for name, p in points.items() if p["far_above_card"]]
    if above:
        lines.append(f"warning: measured FAR above the card's 95% interval at {', '.join(above)}: "
                     "on these classes the model accepts more different-class pairs than its "
                     "card says")
    if all(p["card_tar"] is None for p in points.values()):
        lines.append(f"(model {model_id}'s card predates operating points: it predicts no "
                     "TAR/FAR to compare with)")
    lines.append("TAR@FAR (oracle: threshold chosen on the test pairs themselves):")
    for r in results["tar_at_far"]:
        note = "" if r["resolved"] else (f"; {r['negatives']:,} different-class pairs cannot "
                                         f"resolve FAR {r['far_target']:g}")
        lines.append(f"  FAR {r['far_target']:g}: TAR {r['tar']:.4f} (threshold "
                     f"{r['threshold']:.4f}, FAR {r['far']:.4f}{note})")
    probability = results["probability"]
    lines.append("probability: " + (
        "the card has no distance -> probability map" if probability is None else
        f"expected calibration error {probability['ece']:.4f} on the test pairs "
        f"(card: {probability['card_ece']:.4f} on held-out pairs)"))
    domain = results["domain"]
    lines.append("domain check: " + (
        f"model {model_id} has no domain model; test images were not checked" if domain is None
        else f"{domain['rejected']:.2%} of test images rejected as out of domain "
             f"({domain['rejected_images']:,} of {domain['images']:,}; card: "
             f"{domain['card_heldout_rejected']:.2%} of held-out images)"))
    for weakness in (domain or {}).get("card_weak", []):
        lines.append(f"  the card says the domain check is weak: {weakness}")
    return lines


def _mean_sd(v: dict, digits: int = 4) -> str:
    return f"{v['mean']:.{digits}f} ± {v['sd']:.{digits}f}"


def open_set_lines(r: dict) -> list[str]:
    """Open-set identification as text."""
    from scripts.table import format_table

    lines = [f"open-set 1:N identification ({r['rounds']} rounds; ± is the sd over rounds): "
             f"{r['enrolled_classes']} classes enrolled x {r['shots']} image(s) = gallery of "
             f"{r['gallery_size']:,}, {r['not_enrolled_classes']} classes not enrolled; "
             f"{r['mated_probes']:,.0f} mated and {r['nonmated_probes']:,.0f} non-mated probes "
             "a round"]
    if r["skipped_classes"]:
        lines.append(f"  {r['skipped_classes']} class(es) with fewer than {r['shots'] + 1} images "
                     "were never enrolled (they probe as non-mated only)")
    lines.append(f"  rank-1 identification {_mean_sd(r['rank1'])}, rank-5 {_mean_sd(r['rank5'])}")
    lines.append("  FNIR at FPIR (threshold chosen on the measured non-mated distances):")
    lines.append("    " + format_table(["FPIR", "FNIR", "threshold"], [
        [f"{p['fpir']:g}", _mean_sd(p["fnir"]), _mean_sd(p["threshold"])]
        for p in r["fnir_at_fpir"]]).replace("\n", "\n    "))
    for key, title in (("predicted", "the threshold identify takes (from the gallery's own items "
                                      "where they suffice, else the card)"),
                       ("predicted_service", "the same, as the service answers (a probe out of "
                                             "domain is nobody; a gallery image out of domain "
                                             "never matches)"),
                       ("predicted_by_card", "the card's open-set model alone")):
        if r.get(key) is None:
            if key == "predicted_by_card":
                lines.append("  the card has no open-set model: no prediction of its own")
            continue
        lines.append(f"  {title}, gallery of {r['gallery_size']:,}:")
        lines.append("    " + format_table(
            ["target FPIR", "threshold", "measured FPIR", "identification rate"],
            [[f"{p['fpir']:g}", f"{p['threshold']:.4f}" + ("" if p["calibrated"] else " *"),
              _mean_sd(p["measured_fpir"]), _mean_sd(p["identification_rate"])]
             for p in r[key]]).replace("\n", "\n    "))
        if not all(p["calibrated"] for p in r[key]):
            lines.append("    * not calibrated: stricter than the closest impostor pair the "
                         "card's held-out classes showed, or measured on too few of them")
    return lines


def group_summary(ds, which: str) -> dict:
    if ds.groups is None:
        return {}
    return {"groups": ds.groups_present(), "groups_chosen": which}


def entry() -> None:
    run(main)


if __name__ == "__main__":
    entry()

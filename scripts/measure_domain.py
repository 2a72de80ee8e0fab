"""Measure how well a model's domain check generalises (the numbers in docs/trust.md).

    python -m scripts.measure_domain --model models/fashion-mnist \\
        --dataset fashion-mnist datasets/fashion-mnist --test-split test \\
        --foreign-dataset omniglot datasets/omniglot/images_background_small*.zip

For the model's own held-out split (as training made it), a domain model is trained as
`siamese-train` does, and measured on what it never saw:
- in-domain test images rejected: the dataset's test split (`--test-split`), or, for data with
  groups (Omniglot alphabets, `--group-folds`), alphabets that neither trained nor calibrated it:
  the groups are dealt into folds, each fold in turn is the test, the next calibrates the
  threshold, the rest train;
- foreign images accepted, per family, with that family left out of training (leave one family
  out: generality to kinds of image it has never seen), and for sets it never trains on at all
  (scikit-learn's digits and sample photos, when scikit-learn is installed);
- the same for a Mahalanobis score on the encoder's embeddings (one Gaussian fitted on the
  training images), the baseline the domain model has to beat.
"""
from __future__ import annotations

import argparse
import functools
import json

import numpy as np

from scripts.common import add_dataset_argument, load_foreign, run


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m scripts.measure_domain", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    add_dataset_argument(p)
    p.add_argument("--test-split", choices=["test"], help="fashion-mnist: the test split")
    p.add_argument("--group-folds", type=int, default=0, metavar="K",
                   help="data with groups: deal them into K folds (test, calibrate, train)")
    p.add_argument("--foreign-dataset", nargs="+", action="append", metavar=("KIND", "PATH"),
                   default=[])
    p.add_argument("--families", help="comma-separated foreign families to train with "
                                      "(default: all)")
    p.add_argument("--augment", help="the domain model's distortions (default: the card's)")
    p.add_argument("--rejection", type=float, help="share of calibration images rejected "
                                                   "(default: the domain model's default)")
    p.add_argument("--shipped", action="store_true",
                   help="measure the model's own domain model as it is (no training): its test "
                        "images rejected, each foreign set accepted")
    p.add_argument("--no-leave-out", action="store_true",
                   help="skip leaving each foreign kind out of the check's training in turn")
    p.add_argument("--samples", type=int, default=2000, help="foreign images per family measured")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    return p


def sklearn_sets(pre, seed: int, n: int) -> dict[str, np.ndarray]:
    """Foreign sets no domain model trains on: scikit-learn's handwritten digits (8x8, upscaled
    to 28, as MNIST frames them), white on black and black on white separately (a check must
    refuse both), and random crops of its two sample photos."""
    try:
        from sklearn.datasets import load_digits, load_sample_images
    except ImportError:
        return {}
    from PIL import Image

    from encoder.images import prepare_batch

    rng = np.random.default_rng(seed)
    digits = (load_digits().images * (255 / 16)).astype(np.uint8)
    digits = digits[rng.choice(len(digits), min(n, len(digits)), replace=False)]
    crops = []
    for _ in range(n):
        photo = load_sample_images().images[rng.integers(2)]
        side = int(rng.integers(32, min(photo.shape[:2])))
        y, x = rng.integers(0, photo.shape[0] - side), rng.integers(0, photo.shape[1] - side)
        crops.append(Image.fromarray(photo[y:y + side, x:x + side]))
    return {"sklearn digits, white on black": prepare_batch(
                [Image.fromarray(d, "L").resize((28, 28), Image.BILINEAR) for d in digits], pre),
            "sklearn digits, black on white": prepare_batch(
                [Image.fromarray(255 - d, "L").resize((28, 28), Image.BILINEAR) for d in digits],
                pre),
            "sklearn photos": prepare_batch(crops, pre)}


def mahalanobis(train: np.ndarray):
    """Score = minus the Mahalanobis distance to one Gaussian of the training embeddings
    (covariance shrunk a little towards its diagonal, so it inverts)."""
    mean = train.mean(0)
    cov = np.cov(train - mean, rowvar=False)
    cov = 0.9 * cov + 0.1 * np.diag(np.diag(cov)) + 1e-6 * np.eye(len(cov))
    precision = np.linalg.inv(cov)

    def score(e: np.ndarray) -> np.ndarray:
        d = e - mean
        return -np.sqrt(np.einsum("ij,jk,ik->i", d, precision, d))
    return score


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from encoder import Embedder
    from encoder.config import TrainConfig
    from encoder.datasets import load_dataset
    from encoder.domain import REJECTION
    from encoder.foreign import FAMILIES, foreign_batch
    from encoder.images import prepare_batch

    embedder = Embedder.load(args.model)
    pre = embedder.card.preprocessing
    families = tuple(args.families.split(",")) if args.families else FAMILIES
    ds = load_dataset(args.dataset[0], args.dataset[1:], split="train", pre=pre)
    x = prepare_batch(ds.images, pre)
    extras = load_foreign(args.foreign_dataset, pre)
    unseen = sklearn_sets(pre, seed=99, n=args.samples)
    fresh = {f: foreign_batch(args.samples, pre, seed=4242, families=(f,)) for f in families}
    results = {"model": embedder.model_id, "dataset": ds.name, "families": families}
    if args.shipped:
        return _shipped(args, embedder, {**fresh, **unseen, **extras}, results)
    config = TrainConfig.from_card(embedder.card).resolve(ds)
    options = {"augment": args.augment or config.augment,
               "rejection": args.rejection or REJECTION[config.val_split]}
    results["options"] = options
    splits = _splits(args, ds, x, config, pre)
    fit = functools.partial(_fit, pre=pre, training_data=ds.name, options=options,
                            leave_out=not args.no_leave_out)
    per_split, cards = {}, {}
    for name, train, calibrate, test in splits:
        model, cards[name] = fit(train, calibrate, families, extras)
        per_split[name] = _measure(model, cards[name].threshold, test, {**fresh, **unseen})
        print(f"{name}: " + ", ".join(f"{k} {v:.2%}" for k, v in per_split[name].items()),
              flush=True)
    results["all families"] = per_split
    _, train, calibrate, test = splits[0]
    first_card = cards[splits[0][0]]
    if first_card.left_out is not None:
        # Each kind left out of the first split's check in turn (`fit_domain_model` does it),
        # and the kinds it found to be the training images' own (not used as foreign).
        results["leave one family out"] = first_card.left_out
        results["same kind"] = first_card.same_kind
        results["weak"] = first_card.weak
    results["mahalanobis on embeddings"] = baseline = _mahalanobis_baseline(
        embedder, train, calibrate, test, {**fresh, **unseen, **extras}, options["rejection"])
    print("mahalanobis baseline: " + ", ".join(f"{k} {v:.2%}" for k, v in baseline.items()))
    first = next(iter(per_split.values()))
    lines = [f"{'':<22}{'domain model':>14}{'left out':>10}{'mahalanobis':>13}"]
    for key in first:
        left = results.get("leave one family out", {}).get(key)
        lines.append(f"{key:<22}{first[key]:>14.2%}{'' if left is None else f'{left:.2%}':>10}"
                     f"{baseline.get(key, float('nan')):>13.2%}")
    print("\n".join(lines))
    if results.get("same kind"):
        print("the training images' own kind (not used as foreign): " + ", ".join(
            f"{k} ({v:.0%} accepted when left out)" for k, v in results["same kind"].items()))
    for weakness in results.get("weak", []):
        print(f"weak: {weakness}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


def _shipped(args, embedder, foreign: dict, results: dict) -> int:
    """The model's own domain check, measured as it is on the test split and foreign sets."""
    from encoder.datasets import load_dataset

    if not args.test_split:
        from encoder.errors import ConfigError
        raise ConfigError("--shipped measures on --test-split test")
    pre = embedder.card.preprocessing
    test = load_dataset(args.dataset[0], args.dataset[1:], split=args.test_split, pre=pre)
    kept = embedder.in_domain(test.images)
    results["test images rejected"] = float(np.mean(~kept))
    results["accepted"] = {name: float(np.mean(embedder.in_domain(images)))
                           for name, images in foreign.items()}
    print(f"{'test images rejected':<32}{results['test images rejected']:>8.2%} "
          f"({int((~kept).sum())} of {len(kept):,})")
    for name, share in results["accepted"].items():
        print(f"{name + ' accepted':<32}{share:>8.2%}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


def _splits(args, ds, x: np.ndarray, config, pre) -> list[tuple]:
    """(name, training, calibration, in-domain test images) for each measurement: the model's
    own split against --test-split, or with --group-folds each fold of groups held out."""
    from encoder.datasets import load_dataset
    from encoder.errors import ConfigError
    from encoder.images import prepare_batch
    from encoder.splits import split_train_val

    if args.group_folds:
        if ds.groups is None:
            raise ConfigError(f"--group-folds: {ds.name} has no groups")
        order = np.random.default_rng(0).permutation(np.unique(ds.groups))
        parts = np.array_split(order, args.group_folds)
        splits = []
        for k in range(args.group_folds):
            test = np.isin(ds.groups, parts[k])
            calibrate = np.isin(ds.groups, parts[(k + 1) % args.group_folds])
            names = ", ".join(ds.group_names[g] for g in parts[k])
            splits.append((f"test {names}", x[~test & ~calibrate], x[calibrate], x[test]))
        return splits
    if not args.test_split:
        raise ConfigError("give --test-split or --group-folds: in-domain test images")
    train_idx, val_idx = split_train_val(ds, config)
    test_ds = load_dataset(args.dataset[0], args.dataset[1:], split=args.test_split, pre=pre)
    return [("test split", x[train_idx], x[val_idx], prepare_batch(test_ds.images, pre))]


def _fit(train, calibrate, families, extras, pre, training_data, options, leave_out):
    from encoder.domain import fit_domain_model

    return fit_domain_model(train, calibrate, pre, training_data, seed=0, extra_foreign=extras,
                            families=families, report=print, leave_out=leave_out, **options)


def _measure(model, threshold: float, test: np.ndarray, foreign: dict) -> dict:
    """Share of in-domain test images rejected, and of each foreign set accepted."""
    from encoder.domain import DomainModel

    scorer = DomainModel(model)
    out = {"in-domain rejected": float(np.mean(scorer.score(test) < threshold))}
    for name, images in foreign.items():
        out[name] = float(np.mean(scorer.score(images) >= threshold))
    return out


def _mahalanobis_baseline(embedder, train, calibrate, test, foreign: dict,
                          rejection: float) -> dict:
    """The same measurement for a Mahalanobis distance on the encoder's embeddings."""
    e_train, e_cal, e_test = (embedder.embed_prepared(a) for a in (train, calibrate, test))
    score = mahalanobis(e_train)
    threshold = float(np.quantile(score(e_cal), rejection))
    baseline = {"in-domain rejected": float(np.mean(score(e_test) < threshold))}
    for name, images in foreign.items():
        baseline[name] = float(np.mean(score(embedder.embed_prepared(images)) >= threshold))
    return baseline


def entry() -> None:
    run(main)


if __name__ == "__main__":
    entry()

"""Does a model trained on a user's folder state error rates that hold on classes it never saw?

For each kind of folder, a model is trained with `siamese-train`'s defaults on about 30 classes of
about 10 images, and measured on classes it never saw, against what its card states (the
baseline of this benchmark: the card's own figures, as ratios):
- each operating point's false-accept rate on every distinct pair of the new classes' images,
  against the card's FAR and its 95% interval (target: at most 1.5x, or inside the interval);
- the probability map's calibration error there (target: ECE <= 0.03);
- what the service answers (the domain check applied) beside the distances alone: TAR at
  "balanced";
- the domain check: the new classes' images kept (target >= 98%), and real foreign images it
  never trained on accepted (target <= 5% each);
- 1:N with 5 classes enrolled with 3 images each and 5 strangers: FPIR at a target of 0.05
  (target: within +-0.02) and the identification rate there.

Kinds (all from the repository's datasets/): `omniglot` (characters drawn at random from the
eight alphabets, in the sizes, colours and file formats of `scripts/make_folder.py`), `alphabets`
(the same, trained on four alphabets and measured on the four others), `clothing` (real photos:
seven garment classes to train, the three others new), `fashion` (Fashion-MNIST: seven
classes, three new) and `photos` (scikit-image's sample photographs, each quarter of one a class
photographed ten times: shifted, scaled, turned, lit and compressed differently; 30 quarters of
ten photographs to train, 24 of six others new: a shop's products by photo, in miniature).
"""
from __future__ import annotations

import io
import json
import math
import time
from pathlib import Path

import numpy as np

from scripts.common import FASHION_MNIST_DIR, OMNIGLOT_BACKGROUND, repository_dataset

KINDS = ("omniglot", "alphabets", "clothing", "fashion", "photos")
FPIR_TARGET, ENROLLED, SHOTS, STRANGERS = 0.05, 5, 3, 5


def add_arguments(p) -> None:
    p.add_argument("--kinds", default=",".join(KINDS),
                   help="comma-separated kinds of folder (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the folders and of training")
    p.add_argument("--out", default="runs/bench-trust", help="where folders and models go")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")


def run(args) -> int:
    from scripts.table import format_table

    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        from encoder.errors import ConfigError
        raise ConfigError(f"unknown kind(s) {', '.join(unknown)}; choose from {', '.join(KINDS)}")
    results = []
    for kind in kinds:
        started = time.perf_counter()
        train_dir, unseen_dir = make_folders(kind, Path(args.out) / kind, args.seed)
        results.append(measure(kind, train_dir, unseen_dir, Path(args.out) / kind / "model",
                               args.seed))
        print(f"{kind}: {time.perf_counter() - started:.0f} s", flush=True)
    rows = []
    for r in results:
        for name, p in r["operating_points"].items():
            rows.append([r["kind"], name, "yes" if p["calibrated"] else "no",
                         f"{p['card_far']:.4f} [{p['card_ci'][0]:.4f}, {p['card_ci'][1]:.4f}]",
                         f"{p['far']:.4f}", f"{p['ratio']:.2f}", "ok" if p["holds"] else "MISSED"])
    print(format_table(["kind", "point", "calibrated", "card FAR [95% CI]", "measured FAR",
                        "measured / card", "<= 1.5x or in CI"], rows))
    print()
    print(format_table(
        ["kind", "ECE card / new classes", "TAR balanced: distances / service", "new classes kept",
         "foreign accepted (worst)", f"FPIR at {FPIR_TARGET} ({ENROLLED}x{SHOTS})",
         "identification", "domain check weak"],
        [[r["kind"], f"{r['card_ece']:.3f} / {r['ece']:.3f}",
          f"{r['tar_distances']:.3f} / {r['tar_service']:.3f}", f"{r['kept']:.3f}",
          "{} {:.3f}".format(*max(r["foreign"].items(), key=lambda kv: kv[1])),
          f"{r['fpir']:.3f}", f"{r['identification']:.3f}", len(r["weak"])] for r in results]))
    print()
    halves = [r for r in results if r["classes"] >= 10]
    if halves:
        print(format_table(
            ["kind", "ECE on half the new classes: card's map", "a map fitted on the other half",
             "one fitted on that half itself"],
            [[r["kind"], *[f"{r['ece_halves'][k]:.3f}" for k in ("card", "other_half",
                                                                  "in_sample")]]
             for r in halves]))
        print()
    shapes = list(results[0]["fpir_by_shape"])
    print(format_table(
        ["kind", "threshold", *[f"FPIR at 0.05, {s} enrolled" for s in shapes]],
        [[r["kind"] if key == "fpir_by_shape" else "", name,
          *[f"{r[key][s]:.3f}" for s in shapes]]
         for r in results for key, name in (("fpir_by_shape", "identify's (scaled)"),
                                            ("fpir_by_shape_card", "the card's alone"),
                                            ("fpir_by_shape_oracle", "oracle: fitted on the new"))]))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


# --- the folders ----------------------------------------------------------------------------------

def make_folders(kind: str, out: Path, seed: int) -> tuple[Path, Path]:
    """(training folder, folder of new classes) for a kind, written once."""
    train_dir, unseen_dir = out / "train", out / "unseen"
    if train_dir.is_dir() and unseen_dir.is_dir():
        return train_dir, unseen_dir
    rng = np.random.default_rng(seed)
    if kind in ("omniglot", "alphabets"):
        _omniglot_folders(kind, train_dir, unseen_dir, rng)
    elif kind == "photos":
        _photo_folders(train_dir, unseen_dir, rng)
    elif kind == "clothing":
        root = Path(repository_dataset("clothing-small", "train"))
        classes = rng.permutation(sorted(p.name for p in root.iterdir() if p.is_dir()))
        for names, folder, per in ((classes[:7], train_dir, 30), (classes[7:], unseen_dir, 30)):
            for name in names:
                files = sorted((root / name).glob("*.jpg"))
                (folder / name).mkdir(parents=True, exist_ok=True)
                for f in rng.choice(files, min(per, len(files)), replace=False):
                    (folder / name / f.name).write_bytes(f.read_bytes())
    else:
        from PIL import Image

        from encoder.datasets import load_fashion_mnist

        classes = rng.permutation(10)
        for split, names, folder, per in (("train", classes[:7], train_dir, 10),
                                          ("test", classes[7:], unseen_dir, 30)):
            ds = load_fashion_mnist(FASHION_MNIST_DIR, split)
            for c in names:
                name = ds.class_names[c].replace("/", "-")
                (folder / name).mkdir(parents=True, exist_ok=True)
                for i in rng.choice(np.flatnonzero(ds.labels == c), per, replace=False):
                    Image.fromarray(ds.images[i, :, :, 0]).save(folder / name / f"{i:05d}.png")
    return train_dir, unseen_dir


def _omniglot_folders(kind: str, train_dir: Path, unseen_dir: Path, rng) -> None:
    """30 characters x 10 drawings to train on, 30 others x 10 new, styled as users' files are
    (`scripts.make_folder.styled`); `alphabets`: the new ones from four alphabets never trained on."""
    from encoder.datasets import load_omniglot
    from encoder.images import Preprocessing
    from scripts.make_folder import styled

    ds = load_omniglot(OMNIGLOT_BACKGROUND, Preprocessing(105, 105, 1))
    classes = rng.permutation(ds.num_classes)
    if kind == "alphabets":
        groups = rng.permutation(np.unique(ds.groups))
        group_of = np.array([ds.groups[np.flatnonzero(ds.labels == c)[0]] for c in classes])
        train = classes[np.isin(group_of, groups[:4])][:30]
        unseen = classes[np.isin(group_of, groups[4:])][:30]
    else:
        train, unseen = classes[:30], classes[30:60]
    for names, folder in ((train, train_dir), (unseen, unseen_dir)):
        for c in names:
            target = folder / ds.class_names[c].replace("/", "-")
            target.mkdir(parents=True, exist_ok=True)
            for i in rng.choice(np.flatnonzero(ds.labels == c), 10, replace=False):
                image, suffix = styled(ds.images[i, :, :, 0], rng)
                buf = io.BytesIO()
                image.save(buf, format={".jpg": "JPEG", ".gif": "GIF"}.get(suffix, "PNG"))
                (target / f"{i:05d}{suffix}").write_bytes(buf.getvalue())


# scikit-image's photographs (no drawings, no duplicates: `cat` is `chelsea`)
PHOTOS = ("astronaut", "camera", "coffee", "chelsea", "coins", "moon", "rocket",
          "hubble_deep_field", "immunohistochemistry", "retina", "clock", "grass", "gravel",
          "brick", "microaneurysms", "cell")


def _photo_folders(train_dir: Path, unseen_dir: Path, rng) -> None:
    """Each quarter of a photograph is a class (an object), taken 10 times as a phone would:
    a crop of 60-100% of it, turned up to 10 degrees (and cut to what the turn leaves filled),
    lit 0.75-1.25x, 48-160 pixels on its longer side, JPEG or PNG. The classes to train come
    from 10 photographs and the new ones from the 6 others, so no new class shares a photograph
    with one trained on."""
    from PIL import Image, ImageEnhance
    from skimage import data

    photos = rng.permutation(PHOTOS)
    for names, folder, classes in ((photos[:10], train_dir, 30), (photos[10:], unseen_dir, 24)):
        quarters = []
        for name in names:
            a = getattr(data, str(name))()
            img = Image.fromarray(a, "L" if a.ndim == 2 else "RGB")
            w, h = img.width // 2, img.height // 2
            quarters += [(f"{name}-{i}", img.crop((x, y, x + w, y + h)))
                         for i, (x, y) in enumerate(((0, 0), (w, 0), (0, h), (w, h)))]
        for i in rng.permutation(len(quarters))[:classes]:
            label, quarter = quarters[i]
            (folder / label).mkdir(parents=True, exist_ok=True)
            for j in range(10):
                scale = rng.uniform(0.6, 1.0)
                cw, ch = quarter.width * scale, quarter.height * scale
                x0, y0 = rng.uniform(0, quarter.width - cw), rng.uniform(0, quarter.height - ch)
                view = quarter.crop((round(x0), round(y0), round(x0 + cw), round(y0 + ch)))
                # Turned, then cut to the largest centred box of its shape the turn leaves
                # filled (no black corners).
                turn = rng.uniform(-10, 10)
                c, s = abs(math.cos(math.radians(turn))), abs(math.sin(math.radians(turn)))
                inside = 1 / (c + s * max(view.width, view.height) / min(view.width, view.height))
                kw, kh = view.width * inside, view.height * inside
                view = view.rotate(turn, Image.Resampling.BILINEAR).crop((
                    round((view.width - kw) / 2), round((view.height - kh) / 2),
                    round((view.width + kw) / 2), round((view.height + kh) / 2)))
                side = int(rng.integers(48, 161))  # the longer side
                size = (side, round(side * kh / kw)) if kw >= kh else (round(side * kw / kh), side)
                view = view.resize(size, Image.Resampling.BILINEAR)
                view = ImageEnhance.Brightness(view).enhance(rng.uniform(0.75, 1.25))
                if rng.random() < 0.5:
                    view.save(folder / label / f"{j}.jpg", quality=int(rng.integers(60, 96)))
                else:
                    view.save(folder / label / f"{j}.png")


# --- the measurement ------------------------------------------------------------------------------

def measure(kind: str, train_dir: Path, unseen_dir: Path, model_dir: Path, seed: int) -> dict:
    from encoder import Embedder
    from encoder.calibration import HeldOutPairs, expected_calibration_error, fit_open_set
    from encoder.datasets import load_image_folder
    from encoder.training import TrainConfig, train

    if not (model_dir / "card.json").is_file():
        train(load_image_folder(train_dir), TrainConfig(seed=seed), model_dir)
    embedder = Embedder.load(model_dir)
    card, pre = embedder.card, embedder.card.preprocessing
    unseen = load_image_folder(unseen_dir, pre=pre)
    vectors, checks = embedder.embed_checked(unseen.images)
    kept = np.array([c.in_domain is not False for c in checks])
    pairs = HeldOutPairs.of(vectors, unseen.labels, seed)
    d, same = pairs.distances, pairs.same
    points = {}
    for name, p in card.operating_points.items():
        far = float(np.mean(d[~same] <= p.threshold))
        points[name] = {"threshold": p.threshold, "calibrated": p.calibrated, "card_far": p.far,
                        "card_ci": list(p.far_ci95), "far": far,
                        "ratio": far / p.far if p.far > 0 else float("inf"),
                        "holds": far <= 1.5 * p.far or far <= p.far_ci95[1],
                        "tar": float(np.mean(d[same] <= p.threshold)), "card_tar": p.tar}
    balanced = card.operating_points["balanced"].threshold
    both = kept[pairs.first] & kept[pairs.second]
    fpir, identification = open_set(embedder, vectors, unseen.labels, seed)
    # The product's threshold (the card's, scaled to the gallery), against the card's alone and
    # an oracle: the open-set model fitted on the new classes themselves.
    oracle = fit_open_set(vectors, unseen.labels, seed=seed)
    shapes, by_card, by_oracle = {}, {}, {}
    for n in (5, 15, 25):
        for shots in (1, 3):
            shape = f"{n}x{shots}"
            shapes[shape] = open_set(embedder, vectors, unseen.labels, seed, enrolled=n,
                                     shots=shots)[0]
            by_card[shape] = open_set(embedder, vectors, unseen.labels, seed, enrolled=n,
                                      shots=shots, model=card.open_set)[0]
            by_oracle[shape] = open_set(embedder, vectors, unseen.labels, seed, enrolled=n,
                                        shots=shots, model=oracle)[0]
    return {"kind": kind, "model": card.model_id, "classes": pairs.classes,
            "images": pairs.images, "operating_points": points,
            "ece": expected_calibration_error(card.probability(d), same),
            "card_ece": card.probability.ece,
            "ece_halves": ece_halves(card, vectors, unseen.labels, seed),
            "tar_distances": float(np.mean(d[same] <= balanced)),
            "tar_service": float(np.mean((d <= balanced)[same] & both[same])),
            "kept": float(kept.mean()), "foreign": foreign_accepted(embedder, kind),
            "weak": list(card.domain.weak) if card.domain else [],
            "fpir": fpir, "identification": identification, "fpir_by_shape": shapes,
            "fpir_by_shape_card": by_card, "fpir_by_shape_oracle": by_oracle}


def ece_halves(card, vectors: np.ndarray, labels: np.ndarray, seed: int, rounds: int = 20
               ) -> dict[str, float]:
    """What any calibration from other classes could reach: the new classes dealt in two halves
    (`rounds` times), the ECE on one half of the card's map, of a map fitted on the other half
    (held-out classes as good as they come: the same encoder, the same kind, as many classes),
    and of a map fitted on that half itself (the measurement's own noise). Means."""
    from encoder.calibration import HeldOutPairs, expected_calibration_error, fit_probability

    rng, classes = np.random.default_rng(seed), np.unique(labels)
    out: dict[str, list[float]] = {"card": [], "other_half": [], "in_sample": []}
    for _ in range(rounds):
        order = rng.permutation(classes)
        fit_on, judged = (HeldOutPairs.of(vectors[np.isin(labels, half)],
                                          labels[np.isin(labels, half)], seed)
                          for half in (order[:len(order) // 2], order[len(order) // 2:]))
        for name, mapping in (("card", card.probability), ("other_half",
                                                           fit_probability(fit_on, seed)),
                              ("in_sample", fit_probability(judged, seed))):
            out[name].append(expected_calibration_error(mapping(judged.distances), judged.same))
    return {name: float(np.mean(v)) for name, v in out.items()}


def open_set(embedder, vectors: np.ndarray, labels: np.ndarray, seed: int, rounds: int = 200,
             enrolled: int = ENROLLED, shots: int = SHOTS, model=None) -> tuple[float, float]:
    """FPIR and identification rate at the threshold `identify` takes for a target of 0.05, over
    rounds of `enrolled` classes enrolled with `shots` images each and STRANGERS classes not;
    or, given an open-set `model`, at that model's threshold alone (not scaled to the gallery)."""
    from encoder.distance import pairwise
    from encoder.verdict import nearest_impostors

    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    if len(classes) < enrolled + STRANGERS:
        return float("nan"), float("nan")  # too few new classes to deal
    false, strangers, right, mated = 0, 0, 0, 0
    count = enrolled
    for _ in range(rounds):
        chosen = rng.permutation(classes)[:count + STRANGERS]
        enrolled = chosen[:count]
        gallery = np.concatenate([rng.choice(np.flatnonzero(labels == c), shots, replace=False)
                                  for c in enrolled])
        if model is None:
            threshold = embedder.verdicts.identification_rule(
                len(gallery), FPIR_TARGET, impostors=nearest_impostors(vectors[gallery],
                                                                       labels[gallery]),
                identities=count).threshold
        else:
            threshold = model.threshold_for(FPIR_TARGET, count, shots)[0]
        probes = np.setdiff1d(np.flatnonzero(np.isin(labels, chosen)), gallery)
        distances = pairwise(vectors[probes], vectors[gallery])
        nearest = gallery[distances.argmin(1)]
        hit = distances.min(1) <= threshold
        is_mated = np.isin(labels[probes], enrolled)
        false += int(np.sum(hit & ~is_mated))
        strangers += int(np.sum(~is_mated))
        right += int(np.sum(hit & is_mated & (labels[nearest] == labels[probes])))
        mated += int(np.sum(is_mated))
    return false / strangers, right / mated


def foreign_accepted(embedder, kind: str, n: int = 500) -> dict[str, float]:
    """The share of each set of real foreign images the domain check accepts: none of them is
    what it trained against (scikit-learn's digits in both polarities and its sample photos,
    Fashion-MNIST test images, clothing photos), except the LFW faces, which its `faces` family
    draws from. Photographs of things are not foreign to the `photos` kind: its sets are the
    digits, the faces and Fashion-MNIST's thumbnails."""
    from PIL import Image
    from skimage import data

    from encoder.datasets import load_fashion_mnist
    from encoder.images import prepare_batch
    from scripts.measure_domain import sklearn_sets

    if embedder.domain is None:
        return {}
    pre = embedder.card.preprocessing
    rng = np.random.default_rng(7)
    sets = {**sklearn_sets(pre, seed=7, n=n),  # digits in both polarities, photo crops
            "LFW faces": [Image.fromarray((f * 255).astype(np.uint8))
                          for f in data.lfw_subset()[:100]]}
    if kind != "fashion":
        fashion = load_fashion_mnist(FASHION_MNIST_DIR, "test")
        sets["Fashion-MNIST"] = list(fashion.images[rng.choice(len(fashion), n, replace=False),
                                                    :, :, 0])
    if kind == "photos":
        del sets["sklearn photos"]
    if kind not in ("clothing", "photos"):
        files = sorted(Path(repository_dataset("clothing-small", "train")).glob("*/*.jpg"))
        sets["clothing photos"] = [files[i] for i in rng.choice(len(files), n, replace=False)]
    return {name: float(np.mean(embedder.in_domain(
                images if isinstance(images, np.ndarray) else prepare_batch(images, pre))))
            for name, images in sets.items()}

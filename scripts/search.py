"""siamese-search: look images up in a gallery from the command line.

Prints the k nearest gallery items of each image with their Euclidean distance, the calibrated
probability that both show the same class, and the verdict under an operating point (the
gallery's default, else "balanced"). With --identify, answers 1:N: the enrolled item each image
shows, at the threshold for a target false-positive identification rate at the gallery's size.
An image that does not look like the model's training data is never verified.

Exit status: 0 every image answered, 1 answered but some files could not be read (each named,
as "failed: FILE: reason"), 2 error (nothing answered).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from scripts.common import run
from scripts.gallery_cli import add_gallery_arguments, load_embedder, quiet_faiss


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="siamese-search", description=__doc__,
        epilog="examples: siamese-search query.png --gallery galleries/shop -k 5; "
               "siamese-search face.png --gallery galleries/staff --identify --fpir 0.001")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image file(s) to look up")
    add_gallery_arguments(p)
    p.add_argument("-k", type=int, default=5, help="matches per image (default: %(default)s)")
    p.add_argument("--operating-point", choices=["balanced", "far-1e-2", "far-1e-3"],
                   help="the model card's operating point: best accuracy, or a false-accept "
                        "rate of 1e-2 or 1e-3 on held-out pairs (default: the gallery's)")
    p.add_argument("--threshold", type=float, help="an explicit distance threshold instead")
    p.add_argument("--identify", action="store_true",
                   help="1:N identification: the enrolled item each image shows, or nobody")
    p.add_argument("--fpir", type=float,
                   help="with --identify: target false-positive identification rate, the share "
                        "of people (or things) not enrolled that get identified as someone "
                        "(default: the gallery's, else 0.01)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    quiet_faiss()
    from encoder.errors import BadImageError, ConfigError
    from indexer import Gallery
    from indexer.folder import gallery_model_id

    if args.identify and args.operating_point:
        raise ConfigError("--identify chooses its threshold from --fpir at the gallery's size; "
                          "--operating-point is for 1:1 verdicts")
    if args.fpir is not None and not args.identify:
        raise ConfigError("--fpir goes with --identify")
    # The images and the gallery first: a missing file or gallery is said in a moment, not
    # after TensorFlow and the model have loaded.
    images, failed = _read(args.images)
    if not images:
        raise BadImageError("; ".join(f"{name}: {reason}" for name, reason in failed))
    gallery_model_id(Path(args.gallery), args.db_url)
    embedder = load_embedder(args.model, args.gallery)
    with Gallery.open(args.gallery, embedder, url=args.db_url) as gallery:
        if args.identify:
            _identify(gallery, args, images, failed)
        else:
            _search(gallery, args, images, failed)
    return 1 if failed else 0


def _read(names: list[str]) -> tuple[list[tuple[str, object]], list[tuple[str, str]]]:
    """(name, image) for each image that can be read, and (name, reason) for each that cannot
    (reported, as siamese-index does, while the others are answered)."""
    from encoder.errors import BadImageError
    from encoder.images import open_image

    images, failed = [], []
    for name in names:
        try:
            images.append((name, open_image(Path(name))))
        except BadImageError as exc:
            failed.append((name, str(exc).removeprefix(f"{name}: ")))
    return images, failed


def _failures(failed: list[tuple[str, str]], as_json: bool) -> list[dict]:
    if not as_json:
        for name, reason in failed:
            print(f"failed: {name}: {reason}")
    return [{"image": name, "error": reason} for name, reason in failed]


def _search(gallery, args, images: list, failed: list) -> None:
    results = gallery.search_results([image for _, image in images], k=args.k,
                                     threshold=args.threshold, operating_point=args.operating_point)
    if args.json:
        print(json.dumps({"results": [
            {"image": image, **r.rule.to_dict(), **r.domain.to_dict(),
             "matches": [_match_dict(m) for m in r.matches]}
            for (image, _), r in zip(images, results)],
            "failed": _failures(failed, True)}, indent=2))
        return
    _failures(failed, False)
    for (image, _), r in zip(images, results):
        matches = r.matches
        top = r.top
        if r.domain.in_domain is False:
            verdict = f"not judged: {r.domain.reason}"
        elif top and top.verified:
            verdict = f"verified match: item {top.id} ({top.label or 'no label'})"
        else:
            verdict = "no verified match"
        print(f"{image}: {verdict} ({r.rule.describe()})")
        if r.domain.in_domain is None:
            print(f"  note: {r.domain.reason}")
        if not matches:
            print("  the gallery is empty")
        for rank, m in enumerate(matches, 1):
            mark = ("verified" if m.verified else "no feat." if m.featureless else
                    "foreign" if m.item_in_domain is False else "")
            print(f"  {rank:>3}  id {m.id:<8} distance {m.distance:.4f}{_probability(m):<14}  "
                  f"{mark:<8}  {m.label or '-':<16} {m.source}")
        if any(m.featureless for m in matches) and r.domain.in_domain is not False:
            print("  note: the model finds no features in the images of the items marked "
                  "\"no feat.\": it gives every such image the same embedding, so they are never "
                  "verified")
        if any(m.item_in_domain is False for m in matches) and r.domain.in_domain is not False:
            print("  note: the images of the items marked \"foreign\" did not look like what the "
                  "model was trained on when they were added, so they are never verified")


def _identify(gallery, args, images: list, failed: list) -> None:
    results = [gallery.identification(image, fpir=args.fpir, threshold=args.threshold)
               for _, image in images]
    if args.json:
        print(json.dumps({"results": [
            {"image": image, **r.rule.to_dict(), **r.domain.to_dict(),
             "match": _match_dict(r.match) if r.match else None,
             "nearest": _match_dict(r.nearest) if r.nearest else None}
            for (image, _), r in zip(images, results)],
            "failed": _failures(failed, True)}, indent=2))
        return
    _failures(failed, False)
    for (image, _), r in zip(images, results):
        if r.domain.in_domain is False:
            answer = f"nobody: {r.domain.reason}"
        elif r.match:
            answer = (f"identified: item {r.match.id} ({r.match.label or 'no label'}) at distance "
                      f"{r.match.distance:.4f}{_probability(r.match)}")
        else:
            # No probability beside "nobody": P(same) is for one pair, and reads as a
            # contradiction of the 1:N answer.
            answer = (f"nobody: the nearest, item {r.nearest.id} ({r.nearest.label or 'no label'}), "
                      f"is at distance {r.nearest.distance:.4f}, beyond the threshold")
            if r.nearest.featureless:
                answer += (", an image the model finds no features in (every such image gets the "
                           "same embedding, so it is never verified)")
            elif r.nearest.item_in_domain is False:
                answer += (", an image that did not look like what the model was trained on when "
                           "it was added (it is never verified)")
        print(f"{image}: {answer} ({r.rule.describe()})")
        if r.domain.in_domain is None:
            print(f"  note: {r.domain.reason}")


def _match_dict(m) -> dict:
    return {"id": m.id, "label": m.label, "distance": round(m.distance, 6),
            "probability": None if m.probability is None else round(m.probability, 4),
            "verified": m.verified, "featureless": m.featureless,
            "item_in_domain": m.item_in_domain, "metadata": m.metadata,
            "source": m.source}


def _probability(m) -> str:
    return "" if m.probability is None else f" (P same {m.probability:.2f})"


def entry() -> None:
    run(main)


if __name__ == "__main__":
    entry()

"""siamese-search: look images up in a gallery from the command line.

Prints the k nearest gallery items of each image with their Euclidean distance and whether it is
within the verification threshold (`verified = distance <= threshold`).
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
        epilog="example: siamese-search query.png --gallery galleries/shop -k 5")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image file(s) to look up")
    add_gallery_arguments(p)
    p.add_argument("-k", type=int, default=5, help="matches per image (default: %(default)s)")
    p.add_argument("--threshold", type=float,
                   help="verification threshold (default: the gallery's, else the model card's)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    quiet_faiss()
    from indexer import Gallery

    embedder = load_embedder(args.model)
    with Gallery.open(args.gallery, embedder, url=args.db_url) as gallery:
        threshold = gallery.threshold if args.threshold is None else args.threshold
        results = gallery.search([Path(p) for p in args.images], k=args.k, threshold=threshold)
    if args.json:
        print(json.dumps({"threshold": threshold, "results": [
            {"image": image, "matches": [m.to_dict() for m in matches]}
            for image, matches in zip(args.images, results)]}, indent=2))
        return 0
    for image, matches in zip(args.images, results):
        verdict = "no verified match" if not (matches and matches[0].verified) else \
            f"verified match: item {matches[0].id} ({matches[0].label or 'no label'})"
        print(f"{image}: {verdict} (threshold {threshold:.4f})")
        if not matches:
            print("  the gallery is empty")
        for rank, m in enumerate(matches, 1):
            print(f"  {rank:>3}  id {m.id:<8} distance {m.distance:.4f}  "
                  f"{'verified' if m.verified else '        '}  {m.label or '-':<16} {m.source}")
    return 0


def entry() -> None:
    run(main)


if __name__ == "__main__":
    entry()

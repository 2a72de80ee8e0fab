"""siamese-gallery: look after a gallery: its numbers (stats), whether its files are whole (check),
and a backup in one file (export, import).

An export holds every item's id, label, metadata, source, original image and embedding, and the
gallery's settings; `import` makes a new gallery from it with the same ids, in its folder's
SQLite or in an empty database at --db-url (e.g. PostgreSQL), with its images there or in
--originals. It refuses an export made with another model unless --reembed, which embeds the
images with the model given. A gallery whose metadata is in another database takes --db-url in
every action.

Exit status: 0 done (check: the gallery is whole), 1 check found damage, 2 error.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from scripts.common import add_progress_argument, progress_bar, run
from scripts.gallery_cli import (add_db_url_argument, load_embedder, load_model_card,
                                 quiet_faiss)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="siamese-gallery", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    model_help = "model directory (default: the one the gallery was embedded with)"
    stats = sub.add_parser("stats", help="items, labels, model, verdict defaults, index")
    stats.add_argument("gallery", metavar="GALLERY")
    stats.add_argument("--json", action="store_true", help="print them as JSON")
    check = sub.add_parser("check", help="whether the database and the index are whole, and "
                                         "which items nothing will be verified against")
    check.add_argument("gallery", metavar="GALLERY")
    check.add_argument("--record", action="store_true",
                       help="check the domain of the items added before enrolment checked "
                            "images (from their stored originals), and record it")
    export = sub.add_parser("export", help="every item and the settings, into one zip file")
    export.add_argument("gallery", metavar="GALLERY")
    export.add_argument("file", metavar="FILE", help="the zip file to write (replaced if there)")
    restore = sub.add_parser("import", help="a new gallery from an export")
    restore.add_argument("file", metavar="FILE", help="a zip file written by export")
    restore.add_argument("gallery", metavar="GALLERY", help="a new folder for the gallery")
    restore.add_argument("--reembed", action="store_true",
                         help="embed the images with --model when the export was made with "
                              "another model")
    restore.add_argument("--originals", metavar="FOLDER_OR_URL",
                         help="keep the original images here, content-addressed, instead of in "
                              "the database: a folder, or an fsspec URL such as "
                              "s3://bucket/prefix (with s3fs installed)")
    for action in (stats, check, export, restore):
        action.add_argument("--model", metavar="DIR", help=model_help)
        add_db_url_argument(action, "; an empty database" if action is restore else "")
        add_progress_argument(action)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    quiet_faiss()
    from indexer import Gallery, archive

    if args.action == "import":
        embedder = load_embedder(args.model)
        with progress_bar(args.progress, desc="importing", unit="item") as bar:
            gallery = archive.restore(Path(args.file), Path(args.gallery), embedder,
                                      reembed=args.reembed, progress=bar, url=args.db_url,
                                      originals=args.originals)
        with gallery:
            print(f"imported {len(gallery):,} items from {args.file} into {args.gallery}")
        return 0
    if args.action == "check":
        return _check(args, archive)
    if args.action == "stats":  # the model's card is enough: no TensorFlow to wait for
        from indexer.gallery import read_stats

        stats = read_stats(args.gallery, load_model_card(args.model, args.gallery), args.db_url)
        print(json.dumps(stats.to_dict(), indent=2) if args.json else _stats_text(stats))
        return 0
    embedder = load_embedder(args.model, args.gallery)
    with Gallery.open(args.gallery, embedder, url=args.db_url) as gallery:
        if args.action == "export":
            with progress_bar(args.progress, desc="exporting", unit="item",
                              total=len(gallery)) as bar:
                n = archive.export(gallery, Path(args.file), progress=bar)
            print(f"exported {n:,} items of {args.gallery} to {args.file}")
            return 0


def _check(args, archive) -> int:
    """The database first, without the model (a damaged one may not open); then the index."""
    from indexer import Gallery

    problems = archive.check(Path(args.gallery), args.db_url)
    for problem in problems:
        print(f"damaged: {problem}")
    if problems:
        return 1
    stale = archive.index_state(Path(args.gallery), args.db_url)
    with Gallery.open(args.gallery, load_embedder(args.model, args.gallery),
                      url=args.db_url) as gallery:
        items = len(gallery)
        blank = gallery.featureless_ids()
        if args.record:
            with progress_bar(args.progress, desc="domain check", unit="img") as progress:
                checked = gallery.record_domain_checks(progress=progress)
            print(f"checked and recorded the domain of {checked:,} item(s) added before "
                  "enrolment checked images")
        foreign, unchecked = gallery.domain_ids()
    if stale:
        print(f"note: the index file was not current ({stale}); opening caught it up")
    for ids, what in ((blank, "the model finds no features in"),
                      (foreign, "the images of")):
        if ids:
            shown = ", ".join(map(str, ids[:20])) + (" ..." if len(ids) > 20 else "")
            tail = "" if ids is blank else " do not look like what the model was trained on"
            print(f"note: {what} {len(ids):,} item(s){tail}, so nothing will be verified "
                  f"against them; enrol another image of each: {shown}")
    if unchecked:
        print(f"note: {len(unchecked):,} item(s) were added before enrolment checked images; "
              "siamese-gallery check --record checks them and records the result")
    print(f"ok: {args.gallery}: {items:,} items, database and embeddings whole")
    return 0


def _stats_text(stats) -> str:
    labels = ", ".join(f"{k or '(none)'} {v:,}" for k, v in sorted(stats.labels.items())[:20])
    return f"{stats.summary()}\nlabels: {labels}" + (" ..." if len(stats.labels) > 20 else "")


def entry() -> None:
    run(main)


if __name__ == "__main__":
    entry()

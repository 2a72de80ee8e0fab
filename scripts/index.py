"""siamese-index: add a folder of images to a gallery (created if need be), or re-embed a gallery.

Labels are the first-level sub-folder names (FOLDER/<label>/**/<image>), or come from a CSV
manifest. Images already in the gallery (same bytes) are skipped, so running the command again
resumes an interrupted run and adds only what is new. Bad files are listed at the end.
Exit status: 0 done, 1 done but some files failed, 2 error (nothing more was added).
"""
from __future__ import annotations

import argparse
import functools
import json
from pathlib import Path

from scripts.common import add_progress_argument, progress_bar, run
from scripts.gallery_cli import add_gallery_arguments, load_embedder, quiet_faiss


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="siamese-index", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
               "  siamese-index photos/ --gallery galleries/shop --model models/fashion-mnist\n"
               "  siamese-index --manifest items.csv --gallery galleries/shop --index hnsw\n"
               "  siamese-index --gallery galleries/shop --model models/new --reembed")
    p.add_argument("folder", nargs="?", metavar="FOLDER",
                   help="folder of images, labelled by sub-folder; with --manifest, the base of "
                        "its relative paths")
    add_gallery_arguments(p)
    p.add_argument("--manifest", metavar="CSV",
                   help="CSV file with a header row: path,label[,metadata columns...]; paths are "
                        "relative to FOLDER if given, else to the CSV's folder")
    p.add_argument("--index", metavar="SPEC",
                   help="index of a new gallery, or switch an existing one (rebuilt): flat "
                        "(exact, the default), hnsw[:m=16,ef_construction=80,ef_search=64], "
                        "ivf[:nlist=auto,nprobe=16]")
    p.add_argument("--originals", metavar="FOLDER_OR_URL",
                   help="a new gallery keeps its original images here, content-addressed, "
                        "instead of in its database: a folder, or an fsspec URL such as "
                        "s3://bucket/prefix (with s3fs installed)")
    p.add_argument("--ray", nargs="?", const="", metavar="ADDRESS",
                   help="read and embed on a Ray cluster (pip install 'siamese-search[ray]'): the "
                        "one at ADDRESS (e.g. ray://head:10001 or head:6379), else a local one "
                        "started for the run; several machines need --db-url")
    p.add_argument("--reembed", action="store_true",
                   help="re-embed the gallery's stored images with --model (a new model), "
                        "then rebuild the index")
    p.add_argument("--operating-point", choices=["balanced", "far-1e-2", "far-1e-3"],
                   help="the gallery's default 1:1 operating point (default: balanced); "
                        "requests may choose another")
    p.add_argument("--threshold", type=float,
                   help="the gallery's default threshold instead of an operating point")
    p.add_argument("--fpir", type=float,
                   help="the gallery's default target false-positive identification rate for "
                        "1:N identification (default: 0.01)")
    p.add_argument("--batch-size", type=int, default=512, help="images per batch (default: %(default)s)")
    p.add_argument("--strict", action="store_true", help="stop at the first bad file (exit 2)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    add_progress_argument(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    quiet_faiss()
    from encoder.errors import ConfigError
    from indexer.errors import GalleryError
    from indexer import Gallery
    from indexer.folder import GALLERY_FILE
    from indexer.ingest import folder_sources, ingest, manifest_sources

    verdict = {"operating_point": args.operating_point, "threshold": args.threshold,
               "fpir": args.fpir}
    set_verdict = any(v is not None for v in verdict.values())
    if not (args.folder or args.manifest or args.reembed or args.index or set_verdict):
        raise ConfigError("nothing to do: give a FOLDER or --manifest to add images, --reembed, "
                          "--index to switch the index, or --operating-point/--threshold/--fpir "
                          "to set the gallery's verdict defaults")
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, not {args.batch_size}")
    # Read the folder or manifest before loading the model: a typo fails in a blink.
    ignored: list[str] = []
    if args.manifest:
        sources = manifest_sources(args.manifest, args.folder)
    elif args.folder:
        sources, ignored = folder_sources(args.folder)
    else:
        sources = []
    if args.ray is not None:
        from indexer.ray_ingest import check_address
        check_address(args.ray or None)
    embedder = load_embedder(args.model, args.gallery)
    path = Path(args.gallery)
    bar = functools.partial(progress_bar, args.progress)
    if (path / GALLERY_FILE).exists():
        if args.originals:
            raise ConfigError(f"{path}: --originals is for a new gallery; this one keeps its "
                              "originals where it was made to")
        if args.reembed:
            with bar(desc="re-embedding", unit="img") as progress:
                gallery = Gallery.reembed(path, embedder, url=args.db_url, progress=progress)
        else:
            gallery = Gallery.open(path, embedder, url=args.db_url)
        if args.index:
            gallery.set_index(args.index)
        if set_verdict:
            gallery.set_verdict(**verdict)
    elif args.reembed:
        raise GalleryError(f"{path}: no gallery to re-embed")
    else:
        gallery = Gallery.create(path, embedder, index=args.index or "flat", url=args.db_url,
                                 originals=args.originals, **verdict)
    with gallery:
        with bar(total=len(sources), desc="indexing", unit="img") as progress:
            if args.ray is not None and sources:
                from indexer.ray_ingest import ingest_on_ray
                report = ingest_on_ray(gallery, sources, str(embedder.directory), args.db_url,
                                       args.ray or None, args.batch_size, args.strict, progress)
            else:
                report = ingest(gallery, sources, args.batch_size, args.strict, progress)
        gallery.flush()
        report.ignored = ignored
        stats = gallery.stats()
    if args.json:
        print(json.dumps({"report": report.to_dict(), "gallery": stats.to_dict()}, indent=2))
    else:
        _print_summary(report, stats)
    return 1 if report.failed else 0


def _print_summary(report, stats) -> None:
    for name, reason in report.failed:
        print(f"failed: {name}: {reason}")
    if report.ignored:
        print(f"ignored {len(report.ignored)} file(s) without an image suffix, e.g. {report.ignored[0]}")
    if report.files:
        print(f"added {report.added:,}, skipped {report.skipped:,} already in the gallery, "
              f"{report.duplicates:,} duplicate(s), failed {len(report.failed):,}: "
              f"{report.files:,} file(s) in {report.seconds:.1f} s ({report.images_per_s:,.0f} images/s)")
    for names, what in ((report.featureless, "the model finds no features in"),
                        (report.out_of_domain, "the model's domain check refused")):
        if names:
            shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
            print(f"warning: {what} {len(names):,} added image(s), so no other image will be "
                  f"verified against them: {shown}")
    print(stats.summary())


def entry() -> None:
    run(main)


if __name__ == "__main__":
    entry()

"""siamese-demo: build the sample gallery if it is not built yet, then serve it on 127.0.0.1.

The first run indexes the bundled Fashion-MNIST sample images (samples/fashion-mnist, 3,000 PNGs
in labelled folders) with the bundled model (models/fashion-mnist) into galleries/demo, showing
progress; later runs skip the build and serve within seconds. Paths default to those folders of
the repository this command is installed from (an editable install, as the README's first command
makes), whatever the current folder; --gallery, --model, --samples or SIAMESE_GALLERY /
SIAMESE_MODEL change them.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

from scripts.common import run
from webapp.settings import BUNDLED_MODEL
from scripts.gallery_cli import quiet_faiss
from scripts.serve import add_server_arguments, announce, check, check_gallery, settings_from

REPO = Path(__file__).resolve().parents[1]
DEFAULT_GALLERY = REPO / "galleries" / "demo"
DEFAULT_SAMPLES = REPO / "samples" / "fashion-mnist"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="siamese-demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gallery", metavar="PATH",
                   help=f"gallery folder, built if missing (default: {DEFAULT_GALLERY})")
    p.add_argument("--model", metavar="DIR", help=f"model directory (default: {BUNDLED_MODEL})")
    p.add_argument("--samples", metavar="FOLDER", default=str(DEFAULT_SAMPLES),
                   help="images to build the gallery from, labelled by sub-folder "
                        "(default: %(default)s)")
    p.add_argument("--build-only", action="store_true", help="build the gallery, do not serve")
    add_server_arguments(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    quiet_faiss()
    from webapp.server import serve

    settings = settings_from(args, gallery=DEFAULT_GALLERY, model=BUNDLED_MODEL)
    build(Path(args.samples), settings.gallery_entries[0].path, settings.model)
    if args.build_only:  # the address is not needed: another server may hold it
        check_gallery(settings.gallery_entries[0], several=False)
        return 0
    check(settings)
    return serve(settings, announce=announce_demo, access_log=args.access_log)


def build(samples: Path, gallery: Path, model: Path) -> None:
    """Index `samples` into `gallery` unless it exists. The build happens in `gallery.building`
    and is renamed into place when complete, so an interrupted build is resumed (siamese-index
    skips what it already added), never served half done. It runs in a child process: TensorFlow
    must not be loaded in the server's master process, which forks the workers."""
    if gallery.exists():
        reembed_if_new_model(gallery, model)
        return
    partial = gallery.with_name(gallery.name + ".building")
    print(f"siamese-demo: building the gallery {gallery} from {samples} with the model {model} "
          "(once; later runs skip this)", file=sys.stderr, flush=True)
    # Inside the repository, the items' sources are recorded relative to it (samples/...).
    source = samples.resolve()
    if source.is_relative_to(REPO):
        source = source.relative_to(REPO)
    # Its summary comes back as JSON, to be told under the gallery's own name, not the build's.
    done = subprocess.run([sys.executable, "-m", "scripts.index", str(source), "--gallery",
                           str(partial.resolve()), "--model", str(Path(model).resolve()),
                           "--progress", "always", "--json"], cwd=REPO, stdout=subprocess.PIPE,
                          text=True)
    if done.returncode not in (0, 1):  # 1: built, but some files were bad
        from indexer.errors import GalleryError

        raise GalleryError(f"building {gallery} failed (siamese-index exit status "
                           f"{done.returncode}); run siamese-demo again to resume")
    gallery.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(partial), str(gallery))
    summary = json.loads(done.stdout)
    report, stats = summary["report"], summary["gallery"]
    for failure in report["failed"]:
        print(f"siamese-demo: failed: {failure['file']}: {failure['reason']}", file=sys.stderr)
    print(f"siamese-demo: built {gallery}: {stats['items']:,} items, {len(stats['labels'])} "
          f"labels, in {report['seconds']:.0f} s ({len(report['failed'])} file(s) failed)",
          file=sys.stderr, flush=True)


def reembed_if_new_model(gallery: Path, model: Path) -> None:
    """A demo gallery built with an earlier bundled model (the repository was updated since) is
    re-embedded with the current one, keeping every item, instead of refusing to serve."""
    from encoder import load_card
    from indexer.folder import gallery_model_id

    old, new = gallery_model_id(gallery), load_card(model).model_id
    if old == new:
        return
    print(f"siamese-demo: {gallery} was embedded with model {old}; re-embedding it with {model} "
          f"(model {new})", file=sys.stderr, flush=True)
    done = subprocess.run([sys.executable, "-m", "scripts.index", "--gallery", str(gallery),
                           "--model", str(model), "--reembed"], cwd=REPO)
    if done.returncode != 0:
        from indexer.errors import GalleryError

        raise GalleryError(f"re-embedding {gallery} failed (siamese-index exit status "
                           f"{done.returncode}); it is unchanged")


def announce_demo(settings) -> None:
    announce(settings, command="siamese-demo")


def entry() -> None:
    run(main)


if __name__ == "__main__":
    entry()

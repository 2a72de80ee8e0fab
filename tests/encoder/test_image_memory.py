"""What an accepted image may cost: a 6300x6300 16-bit PNG (80 KB on disk, under the 40 MP limit)
took 680 MB and 1.9 s to prepare; any accepted image must stay under 300 MB."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tests.support import REPO, child_env

pytestmark = pytest.mark.slow  # writes a 40 MP PNG and measures a child process

MEASURE = """
import resource, sys
from encoder.images import Preprocessing, prepare_batch
data = open(sys.argv[1], "rb").read()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
x = prepare_batch([data], Preprocessing(28, 28, 1))
grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
print(grown, float(x.mean()))
"""


@pytest.mark.parametrize("mode", ["I;16", "RGBA"])
def test_the_largest_accepted_image_costs_under_300_mb(tmp_path, mode):
    side = 6300
    if mode == "I;16":
        pixels = np.zeros((side, side), np.uint16)
        pixels[::7, ::3] = 60000
    else:
        pixels = np.zeros((side, side, 4), np.uint8)
        pixels[::7, ::3] = (200, 100, 50, 255)
    path = tmp_path / "big.png"
    Image.fromarray(pixels).save(path)
    done = subprocess.run([sys.executable, "-c", MEASURE, path], capture_output=True, text=True,
                          env=child_env(), cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    grown, mean = map(float, done.stdout.split())
    assert grown < 300, f"{mode}: {grown:.0f} MB"
    assert 0 < mean < 255  # the sparse pattern survives as a grey level, not black or white


def _variant(png: bytes, k: int) -> bytes:
    """The same PNG with a text chunk saying `k`: other bytes (another sha256, so no add takes it
    for one already there), the same pixels."""
    import struct
    import zlib

    body = b"tEXt" + b"variant\0" + str(k).encode()
    chunk = struct.pack(">I", len(body) - 4) + body + struct.pack(">I", zlib.crc32(body))
    end = png.rindex(b"IEND") - 4
    return png[:end] + chunk + png[end:]


ADDS = """
import io, resource, sys, threading, zipfile
from indexer import Gallery
from webapp.enrol import add_uploads
from encoder import Embedder
from tests.support import SAMPLES
big = open(sys.argv[1], "rb").read()
sys.path.insert(0, ".")
from tests.encoder.test_image_memory import _variant
gallery = Gallery.create(sys.argv[2], Embedder.load("models/fashion-mnist"))
gallery.add([next(SAMPLES.glob("*/*.png"))], labels="warm-up")
pre = gallery.embedder.card.preprocessing
start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
zipped = io.BytesIO()
with zipfile.ZipFile(zipped, "w", zipfile.ZIP_DEFLATED) as z:
    for k in range(16):
        z.writestr(f"big{k}.png", _variant(big, k))
report = add_uploads(gallery, [("many.zip", zipped.getvalue())], "zip", {}, False, 20_000_000)
assert [o.status for o in report.outcomes] == ["added"] * 16, report.outcomes
one_zip = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
from indexer.records import Original
errors = []
def add(k):
    try:
        gallery.add_originals([Original.from_bytes(_variant(big, 100 + k), f"a{k}", pre=pre)],
                              ["api"], [{}])
    except Exception as exc:
        errors.append(exc)
threads = [threading.Thread(target=add, args=(k,)) for k in range(8)]
[t.start() for t in threads]; [t.join() for t in threads]
assert not errors, errors
print((one_zip - start) / 1024, (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - start) / 1024,
      len(gallery))
"""


def test_adds_decode_within_the_budget_a_zip_of_16_and_8_at_once(tmp_path):
    """A zip of 16 worst-case PNGs (16-bit, 6300x6300: 80 MB each decoded) added from the page's
    path, then 8 added at once as the API adds them: decoded two at a time, each shrunk before
    its slot is let go, the zip's members unpacked a batch at a time."""
    side = 6300
    pixels = np.zeros((side, side), np.uint16)
    pixels[::7, ::3] = 60000
    path = tmp_path / "big.png"
    Image.fromarray(pixels).save(path)
    done = subprocess.run([sys.executable, "-c", ADDS, path, tmp_path / "gallery"],
                          capture_output=True, text=True, env=child_env(), cwd=REPO, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    zip_grown, all_grown, items = done.stdout.split()
    assert int(items) == 1 + 16 + 8
    assert float(zip_grown) < 300, f"the zip grew the process by {float(zip_grown):.0f} MB"
    assert float(all_grown) < 600, f"8 adds at once grew it by {float(all_grown):.0f} MB"


def _png(side: int) -> bytes:
    import io

    out = io.BytesIO()
    Image.fromarray(np.full((side, side), 128, np.uint8)).save(out, "PNG")
    return out.getvalue()


def test_small_images_decode_while_large_ones_hold_every_slot():
    """Only images of over a megapixel take a decode slot: with both held (two huge decodes in
    progress), a query of the usual size decodes at once, and a large one waits for a slot."""
    import threading

    from encoder import images

    small, large = _png(64), _png(1200)
    done: dict[str, tuple] = {}

    def run(name, data):
        done[name] = images.decode_shrunk(data, name, images.Preprocessing(28, 28, 1))[1:]

    for _ in range(2):
        images.DECODE_SLOTS.acquire()
    try:
        waiting = threading.Thread(target=run, args=("large", large), daemon=True)
        waiting.start()
        quick = threading.Thread(target=run, args=("small", small), daemon=True)
        quick.start()
        quick.join(timeout=60)
        assert done.get("small") == ((64, 64), "PNG")
        waiting.join(timeout=1.0)
        assert waiting.is_alive() and "large" not in done  # no slot for it yet
    finally:
        for _ in range(2):
            images.DECODE_SLOTS.release()
    waiting.join(timeout=60)
    assert done["large"] == ((1200, 1200), "PNG")

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

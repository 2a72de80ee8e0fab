"""Commands print what users need, not TensorFlow's import-time C++ log lines."""
from __future__ import annotations

import subprocess
import sys

import pytest

from encoder.quiet import TENSORFLOW_NOISE
from tests.support import REPO, SAMPLES, child_env

pytestmark = pytest.mark.slow  # a child process that loads TensorFlow


def test_a_command_that_loads_the_model_prints_no_tensorflow_banner(tmp_path, model_dir):
    folder = tmp_path / "photos" / "Bag"
    folder.mkdir(parents=True)
    for png in sorted((SAMPLES / "Bag").glob("*.png"))[:3]:
        (folder / png.name).write_bytes(png.read_bytes())
    done = subprocess.run([sys.executable, "-m", "scripts.index", str(tmp_path / "photos"),
                           "--gallery", str(tmp_path / "g"), "--model", str(model_dir)],
                          capture_output=True, text=True, env=child_env(), cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("added 3,")
    lines = done.stderr.splitlines()
    assert not [line for line in lines if TENSORFLOW_NOISE.match(line)], done.stderr
    assert not [line for line in lines if "absl" in line or "oneDNN" in line], done.stderr


def test_the_noise_filter_keeps_everything_else():
    noise = ["WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
             "I0000 00:00:1796219855.513731   28327 port.cc:153] oneDNN custom operations are on.",
             "I0000 00:00:1796219855.548177   28327 cpu_feature_guard.cc:227] This TensorFlow binary",
             "To enable the following instructions: AVX2 AVX512F FMA, in other operations, rebuild"]
    kept = ["error: models/x: no such model directory",
            "E0000 00:00:1796219855.548177   28327 cuda_dnn.cc:8579] Unable to register cuDNN",
            "WARNING: something else", "100%|##########| 3/3 [00:01<00:00, 2.50 images/s]"]
    assert all(TENSORFLOW_NOISE.match(line) for line in noise)
    assert not any(TENSORFLOW_NOISE.match(line) for line in kept)

"""Commands print what users need, not TensorFlow's import-time C++ log lines."""
from __future__ import annotations

import subprocess
import sys

import pytest

from encoder.quiet import TENSORFLOW_NOISE
from tests.support import REPO, SAMPLES, child_env

pytestmark = pytest.mark.slow  # a child process that loads TensorFlow


def index_three_bags(tmp_path, model_dir) -> subprocess.CompletedProcess:
    """siamese-index, in a child process, of three sample bags into tmp_path/g."""
    folder = tmp_path / "photos" / "Bag"
    folder.mkdir(parents=True)
    for png in sorted((SAMPLES / "Bag").glob("*.png"))[:3]:
        (folder / png.name).write_bytes(png.read_bytes())
    return subprocess.run([sys.executable, "-m", "scripts.index", str(tmp_path / "photos"),
                           "--gallery", str(tmp_path / "g"), "--model", str(model_dir)],
                          capture_output=True, text=True, env=child_env(), cwd=REPO, timeout=300)


def test_a_command_that_loads_the_model_prints_no_tensorflow_banner(tmp_path, model_dir):
    done = index_three_bags(tmp_path, model_dir)
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


def test_importing_encoder_and_embedding_an_image_print_nothing(model_dir):
    """A library user's first lines: no oneDNN or cpu_feature_guard banner, no absl warning."""
    code = ("from encoder import Embedder\n"
            f"e = Embedder.load({str(model_dir)!r})\n"
            f"e.embed([{str(SAMPLES / 'Bag' / sorted(p.name for p in (SAMPLES / 'Bag').iterdir())[0])!r}])\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={k: v for k, v in child_env().items() if k != "TF_CPP_MIN_LOG_LEVEL"},
                          cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "" and done.stderr == "", done.stderr


def test_commands_check_their_arguments_before_loading_tensorflow(tmp_path):
    """A missing image or a bad dataset kind is said at once: the answer comes before TensorFlow
    (a few seconds to import) is loaded, which the process's modules show."""
    for argv in (["scripts.search", str(tmp_path / "nope.jpg"), "--gallery", str(tmp_path / "g")],
                 ["scripts.train", "--dataset", "photos/", "--out", str(tmp_path / "m")]):
        code = ("import runpy, sys\n"
                f"sys.argv = {argv!r}\n"
                "try:\n"
                f"    runpy.run_module({argv[0]!r}, run_name='__main__')\n"
                "except SystemExit as e:\n"
                "    print('tensorflow' in sys.modules, e.code)\n")
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              env=child_env(), cwd=REPO, timeout=300)
        assert done.stdout.split() == ["False", "2"], (argv, done.stdout, done.stderr)
        assert done.stderr.startswith("error: ")


def test_gallery_stats_reads_the_card_not_the_model(tmp_path, model_dir):
    built = index_three_bags(tmp_path, model_dir)
    assert built.returncode == 0, built.stderr
    code = ("import runpy, sys\n"
            f"sys.argv = ['siamese-gallery', 'stats', {str(tmp_path / 'g')!r}]\n"
            "try:\n"
            "    runpy.run_module('scripts.gallery', run_name='__main__')\n"
            "except SystemExit as e:\n"
            "    print('tensorflow' in sys.modules, e.code)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=child_env(), cwd=REPO, timeout=300)
    assert done.stdout.startswith(f"gallery {tmp_path / 'g'}: 3 items"), done.stderr
    assert done.stdout.split()[-2:] == ["False", "0"]

"""TensorFlow, quietly: its C++ start-up lines and one known-harmless warning never reach a
user's terminal, from our commands or from importing our packages; every other line (a real
error included) still does.

TensorFlow's C++ side prints while it is imported, whatever TF_CPP_MIN_LOG_LEVEL says (its logging
is not initialised yet: tensorflow/tensorflow#100442), and Keras 3's datasets meet a TensorFlow
whose op definitions lack an attribute they set, which TensorFlow reports as an "E" line at every
`fit` though nothing is wrong. Those lines, and only those, are filtered out of file descriptor 2
while TensorFlow is imported (`QuietTensorFlowImport`) and while a model fits (`filtered_stderr`).
"""
from __future__ import annotations

import importlib.abc
import importlib.util
import logging
import os
import re
import sys
import tempfile
from contextlib import contextmanager
from typing import Iterator

TENSORFLOW_NOISE = re.compile(
    r"WARNING: All log messages before absl::InitializeLog\(\) is called"
    r"|[IW]\d{4} [\d:.]+ +\d+ (port|cpu_feature_guard)\.cc:\d+\]"
    r"|To enable the following instructions: "
    r"|E\d{4} [\d:.]+ +\d+ node_def_util\.cc:\d+\] NodeDef mentions attribute "
    r"use_unbounded_threadpool ")

# Converting a model to LiteRT and starting its interpreter: MLIR's and XNNPACK's progress lines.
LITE_NOISE = re.compile(
    TENSORFLOW_NOISE.pattern +
    r"|INFO: Created TensorFlow Lite XNNPACK delegate"
    r"|[IW]\d{4} [\d:.]+ +\d+ (tf_tfl_flatbuffer_helpers|flatbuffer_export|"
    r"tf_saved_model_freeze_variables|fallback_to_flex_ops)\.cc:\d+\]")


@contextmanager
def quiet_loggers(*names: str, level: int = logging.WARNING) -> Iterator[None]:
    """The Python loggers `names` at `level` at least meanwhile: TensorFlow's converter logs its
    progress at INFO (a function's inputs renamed, assets written to a temporary folder), which a
    server whose logging shows INFO (gunicorn's) would print."""
    loggers = [logging.getLogger(name) for name in names]
    before = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(max(level, logger.level))
    try:
        yield
    finally:
        for logger, old in zip(loggers, before):
            logger.setLevel(old)


@contextmanager
def filtered_stderr(noise: re.Pattern = TENSORFLOW_NOISE) -> Iterator[None]:
    """Everything written to file descriptor 2 (C and C++ code included) meanwhile, less the
    lines `noise` matches at their start, passed on when the block ends."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as caught:
        os.dup2(caught.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            caught.seek(0)
            for line in caught.read().decode(errors="replace").splitlines(keepends=True):
                if not noise.match(line):
                    sys.stderr.write(line)
            sys.stderr.flush()


class QuietTensorFlowImport(importlib.abc.MetaPathFinder):
    """Imports `tensorflow`, wherever it is first imported, inside `filtered_stderr`."""

    def find_spec(self, name, path, target=None):
        if name != "tensorflow":
            return None
        sys.meta_path.remove(self)  # once, and the real finders find it
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            exec_module = spec.loader.exec_module

            def quiet_exec(module):
                with filtered_stderr():
                    exec_module(module)

            spec.loader.exec_module = quiet_exec
        return spec


def install() -> None:
    """Quiet TensorFlow's import, if it is not imported yet; its C++ INFO and WARNING lines
    off unless the environment asks for them (errors still show)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if "tensorflow" not in sys.modules and not any(
            isinstance(f, QuietTensorFlowImport) for f in sys.meta_path):
        sys.meta_path.insert(0, QuietTensorFlowImport())

"""Import TensorFlow once, with its start-up notices printed once.

TensorFlow 2.21 links its platform code into two shared libraries
(``libtensorflow_framework.so`` and ``_pywrap_tensorflow_internal.so``), each
with its own copy of absl logging, so every notice logged while they load
(``WARNING: All log messages before absl::InitializeLog() ...`` and the
``oneDNN custom operations are on`` line) reaches stderr twice, whatever
``TF_CPP_MIN_LOG_LEVEL`` says. :func:`import_tensorflow` captures file
descriptor 2 during the import and writes each distinct line once.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile

# glog/absl prefix: "I0000 00:00:1795638541.509425   10199 " (level, date, time, thread).
_LOG_PREFIX = re.compile(r"^[IWEF]\d{4} [\d:.]+\s+\d+ ")


def dedupe_startup_lines(text: str) -> str:
    """``text`` without the lines that repeat an earlier one (log prefixes ignored)."""
    seen = set()
    out = []
    for line in text.splitlines(keepends=True):
        key = _LOG_PREFIX.sub("", line).strip()
        if key and key in seen:
            continue
        seen.add(key)
        out.append(line)
    return "".join(out)


def import_tensorflow():
    """``import tensorflow`` (quiet by default: ``TF_CPP_MIN_LOG_LEVEL=2`` unless set)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if "tensorflow" in sys.modules:
        import tensorflow as tf

        return tf
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow as tf
        except ImportError as err:
            from .._loader import missing_tensorflow_error

            raise missing_tensorflow_error(err) from err
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            text = captured.read().decode("utf-8", "replace")
            if text:
                sys.stderr.write(dedupe_startup_lines(text))
                sys.stderr.flush()
    return tf

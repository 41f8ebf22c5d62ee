"""A ``.gguf`` model is converted once: its cache folder name is the same in
every process (Python's ``hash()`` is salted per process, so keying on it
re-converted the model in every actor), and changes when the file does."""

from __future__ import annotations

import os
import subprocess
import sys


def _key_in_new_process(path) -> str:
    code = "import sys; from pathlib import Path; from hbat.models.default import gguf_cache_key; " \
           "print(gguf_cache_key(Path(sys.argv[1])))"
    env = dict(os.environ, PYTHONHASHSEED="random")
    return subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True,
                          env=env).stdout.strip()


def test_key_is_stable_across_processes_and_follows_the_file(tmp_path):
    f = tmp_path / "model.Q4.gguf"
    f.write_bytes(b"GGUF" + b"\0" * 64)
    first, second = _key_in_new_process(f), _key_in_new_process(f)
    assert first == second and first.startswith("model.Q4-")
    f.write_bytes(b"GGUF" + b"\1" * 65)  # replaced in place: converted again
    assert _key_in_new_process(f) != first

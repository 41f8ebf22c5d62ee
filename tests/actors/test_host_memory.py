"""A CPU actor's process keeps the big blocks it frees, so the next step does
not fault them in again (``actors/host_memory.py``).

Each case runs in a fresh interpreter: the thresholds are process-wide and
cannot be put back once raised.
"""

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc only")

#: allocate, touch and free a 128 MB block (an embedding gradient's size)
#: eight times, as eight training steps would; report each one's page faults.
_STEPS = """
import json, resource, torch
from hbat.actors.training import setup_actor
from hbat.actors.host_memory import keep_freed_blocks
setup_actor("cpu", torch_threads=1)
def step():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    x = torch.empty(32 * 1024 * 1024, dtype=torch.float32)
    x.fill_(1.0)
    del x
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
faults = [step() for _ in range(8)]
print(json.dumps({"applied": keep_freed_blocks(), "faults": faults}))
"""


def _run(env_extra: dict) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env.pop("HBAT_HOST_MALLOC", None)
    env.update(env_extra)
    out = subprocess.run([sys.executable, "-c", _STEPS], env=env, capture_output=True, text=True, timeout=120, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_cpu_actor_reuses_freed_blocks_without_page_faults():
    tuned = _run({})
    assert tuned["applied"] is True
    # 128 MB is 32768 pages of 4 KB: the first touch faults them in. torch
    # asks for 64-byte aligned blocks, and a freed one can be a few bytes short
    # of the next request until it merges with its neighbours, so one more
    # step may map a block anew (seen in 1 of 3 runs, always by the third
    # step); from then on every step finds its block mapped already.
    assert tuned["faults"][0] > 10_000
    assert sum(tuned["faults"][1:]) < 2 * 32768 + 1_000, tuned
    assert max(tuned["faults"][4:]) < 1_000, tuned


def test_default_malloc_faults_every_step_and_the_opt_out_keeps_it():
    default = _run({"HBAT_HOST_MALLOC": "default"})
    assert default["applied"] is False
    # glibc's defaults mmap the block afresh every step: the cost this avoids
    assert min(default["faults"]) > 10_000, default

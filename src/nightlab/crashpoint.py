"""Named points where nightlab kills itself as a crash would, so tests can prove that every step resumes.

`NIGHTLAB_CRASH_AT=<name>[#<k>]` makes the k-th arrival (default the first) of this process at point <name>
SIGKILL nightlab's whole process group, as `kill -9` of a terminal's job or an out-of-memory kill would: no
handler, no `finally`, its git and training children die with it. A test or the chaos suite sets it; unset,
a point costs one environment lookup.
"""

from __future__ import annotations

import os
import signal
import threading
from collections import Counter

ENV = "NIGHTLAB_CRASH_AT"
_arrivals: Counter[str] = Counter()
_lock = threading.Lock()


def reached(name: str) -> None:
    spec = os.environ.get(ENV)
    if not spec:
        return
    want, _, nth = spec.partition("#")
    if want != name:
        return
    with _lock:  # trials in threads may arrive at once: each arrival has its own number
        _arrivals[name] += 1
        hit = _arrivals[name] == int(nth or 1)
    if hit:
        # Only a group leader takes its group down: started from a shell or a test without a session of its
        # own, nightlab shares its caller's group, and the caller must survive to resume it.
        if os.getpgrp() == os.getpid():
            os.killpg(os.getpgrp(), signal.SIGKILL)
        os.kill(os.getpid(), signal.SIGKILL)

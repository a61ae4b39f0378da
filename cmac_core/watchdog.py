"""No silent hangs: each rank's heartbeat on the rendezvous store, and waits off collectives.

``Watchdog``: a thread per rank publishes the rank's place (a step and what it is doing)
with a beat counter to the store ``cmac_core.distributed.init`` made; a rank that has
waited the collective timeout names the rank whose beat stopped (SIGSTOP, a lost node) or
that fell behind, in one line, instead of waiting silently for NCCL's watchdog (10
minutes) or gloo's (30). ``wait_for_all``: ranks that finish imbalanced work early wait
on the store, not in a collective, for as long as the others keep their heartbeat.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time

from cmac_core.distributed import DistInfo, store_and_prefix


class Watchdog:
    """Each rank's progress ``(count, phase)`` on the rendezvous store, and a monitor.

    The main loop only sets ``progress`` (no I/O). A publisher thread writes it with a beat
    counter to the store every ``beat_s``; once this rank's progress has not moved for a
    while it also reads the other ranks', noting whose beat stops moving (a stopped or
    dead process: SIGSTOP, a lost node). When this rank has waited ``timeout_s`` and some
    rank is silent (or, with ``name_laggards``, behind it or elsewhere: training, where
    every step waits for every rank), ``on_timeout`` gets one line naming it (default:
    print it and end the process with exit code 1, as the main thread may be blocked
    inside a collective). Ranks that all wait in one place at one count (a long compile,
    a save every rank waits for) are left to the backend's timeout, set a little longer.
    A rank that calls ``finish`` is done: never silent, never behind.
    """

    def __init__(self, store, prefix: str, rank: int, world: int, *, timeout_s: float,
                 what: str = "step", name_laggards: bool = True, on_timeout=None) -> None:  # fmt: skip
        self.store, self.key, self.rank, self.world = store, prefix + "beat", rank, world
        self.timeout_s, self.what, self.name_laggards = timeout_s, what, name_laggards
        self.beat_s = min(10.0, max(0.2, timeout_s / 20))
        self.count, self.phase = -1, "starting"
        self.on_timeout = on_timeout or _exit_with
        self._stop = threading.Event()
        self._beat = 0
        self._others: dict[int, tuple[str, float]] = {}  # rank -> (last value, when it changed)
        self._snapshot: dict[int, tuple[int, str]] = {}
        self._last_round = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="avprep-watchdog", daemon=True)

    @classmethod
    def start_for(cls, info: DistInfo, **kw) -> Watchdog | None:
        """A running watchdog for this rank's process group, or None outside one."""
        store, prefix = store_and_prefix()
        if not info.distributed or store is None:
            return None
        dog = cls(store, prefix, info.rank, info.world_size, timeout_s=info.timeout_s, **kw)
        dog._publish()
        dog._thread.start()
        return dog

    def progress(self, count: int, phase: str = "") -> None:
        """The main loop's place: ``count`` (a step) and what it is doing now."""
        self.count, self.phase = count, phase

    def finish(self) -> None:
        """This rank is done: say so on the store (others stop waiting on its heartbeat)."""
        self.stop()
        self.phase = "done"
        with contextlib.suppress(Exception):  # the store's host is gone: nothing waits on us
            self._publish()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=2 * self.beat_s + 1)

    def _publish(self) -> None:
        self._beat += 1
        self.store.set(f"{self.key}/{self.rank}", f"{self.count} {self._beat} {self.phase}")

    def _run(self) -> None:
        seen, since = (self.count, self.phase), time.monotonic()
        while not self._stop.wait(self.beat_s):
            now = time.monotonic()
            if (self.count, self.phase) != seen:
                seen, since = (self.count, self.phase), now
            try:
                self._publish()
                if now - since >= 2 * self.beat_s:
                    self._read_others()
                self._last_round = time.monotonic()
            except Exception:  # noqa: BLE001  (the store's host is gone: judged below)
                pass
            if now - since >= self.timeout_s and not self._stop.is_set():
                line = self.judge(now - since)
                if line is not None:
                    self.on_timeout(line)
                    return

    def _read_others(self) -> None:
        now = time.monotonic()
        for r in range(self.world):
            k = f"{self.key}/{r}"
            if r == self.rank or not self.store.check([k]):
                continue
            value = self.store.get(k).decode()
            old = self._others.get(r)
            if old is None or old[0] != value:
                self._others[r] = (value, now)
            count, _, phase = value.split(" ", 2)
            self._snapshot[r] = (int(count), phase)

    def judge(self, waited_s: float) -> str | None:
        """The one line to stop with after this rank waited ``waited_s``, or None (every
        rank alive and, with ``name_laggards``, at the same place)."""
        now = time.monotonic()
        me = f"rank {self.rank} waited {waited_s:.0f} s at {self.what} {self.count} ({self.phase})"
        tail = f"(collective timeout {self.timeout_s:g} s); stopped"
        if now - self._last_round > 3 * self.beat_s + 5:
            return (f"the rendezvous store (MASTER_ADDR, usually rank 0's host) stopped answering "
                    f"for {now - self._last_round:.0f} s; {me} {tail}")  # fmt: skip
        done = {r for r, (_, p) in self._snapshot.items() if p == "done"}
        silent_after = max(3 * self.beat_s, min(self.timeout_s / 2, 30.0))
        silent = [(r, now - t) for r, (_, t) in sorted(self._others.items())
                  if now - t >= silent_after and r not in done]  # fmt: skip
        never = [r for r in range(self.world) if r != self.rank and r not in self._others]
        if silent or never:
            parts = [f"rank {r} (no heartbeat for {s:.0f} s, last at {self.what} "
                     f"{self._snapshot[r][0]}, {self._snapshot[r][1]})" for r, s in silent]  # fmt: skip
            parts += [f"rank {r} (never reported)" for r in never]
            return f"{'; '.join(parts)} stopped answering: {me} {tail}"
        if not self.name_laggards:
            return None
        places = {r: v for r, v in self._snapshot.items() if r not in done}
        places[self.rank] = (self.count, self.phase)
        if len(set(places.values())) > 1:
            lowest = min(c for c, _ in places.values())
            odd = [(r, c, p) for r, (c, p) in sorted(places.items())
                   if c == lowest and (c, p) != (self.count, self.phase)]  # fmt: skip
            odd = odd or [(r, c, p) for r, (c, p) in sorted(places.items()) if c == lowest]
            named = "; ".join(f"rank {r} at {self.what} {c} ({p})" for r, c, p in odd[:8])
            return f"{named}: it did not reach this rank's place; {me} {tail}"
        return None


def _exit_with(line: str) -> None:
    """Print ``line`` as the CLI prints an error and end the process now: the main thread
    may be blocked inside a collective that only the backend's timeout would end."""
    print(f"avprep: error: {line}", file=sys.stderr, flush=True)
    os._exit(1)


def wait_for_all(name: str, info: DistInfo) -> None:
    """Return once every rank has called ``wait_for_all(name)``, waiting on the rendezvous
    store, not in a collective: a rank that finished its share early waits here for as
    long as the others keep working (no collective timeout, no NCCL watchdog), and the
    ``Watchdog`` ends the wait, naming the rank, if one stops answering. The collectives
    after it then wait for nobody."""
    store, prefix = store_and_prefix()
    if not info.distributed or store is None:
        return
    full = f"{prefix}wait/{name}"
    store.set(f"{full}/{info.rank}", "1")
    keys = [f"{full}/{r}" for r in range(info.world_size)]
    # check, not a blocking wait: the store's client stays free for the watchdog's beats
    while not store.check(keys):  # not every rank yet: the watchdog judges the silent ones
        time.sleep(0.2)

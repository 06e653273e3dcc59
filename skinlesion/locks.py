"""One kind of lock for everything jobs share: a run directory, the image store, a GPU, a shared stage-1 run.

A lock is a file. Its holder takes an ``flock`` on it — the operating system drops that when the holder exits,
however it exits — and writes into it who holds it (host, pid, start time); while held, a thread refreshes the
file's modification time every :data:`HEARTBEAT_S` seconds. So a process that finds the lock taken can say who has
it, and:

- a holder on this host that died has lost its ``flock``: the lock is simply taken over;
- a holder on another host (a cluster filesystem whose ``flock`` is node-local, Lustre's ``localflock``) counts while
  its heartbeat is younger than :data:`STALE_S` seconds, and is stale after that.

Where ``flock`` does not work at all (Lustre's ``noflock`` raises ``ENOLCK``/``EOPNOTSUPP``), the lock falls back to
exclusive creation of ``<lock>.held`` with the same holder record and heartbeat, said once per process; a holder on
this host whose pid is gone, or any holder whose heartbeat is stale, is taken over.
"""
from __future__ import annotations

import errno
import json
import logging
import os
import platform
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

try:
    import fcntl
except ImportError:   # not POSIX: only the exclusive-create fallback
    fcntl = None

log = logging.getLogger(__name__)

HEARTBEAT_S = 30.0   # how often a holder refreshes its lock file
STALE_S = 120.0      # a holder on another host whose heartbeat is older than this has died
_NO_FLOCK = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)
_said_fallback = False


class Held(Exception):
    """The lock is held by someone else (:attr:`holder` says who)."""

    def __init__(self, path: Path, holder: dict | None):
        self.path, self.holder = path, holder or {}
        super().__init__(f"{path} is held by {describe(self.holder)}")


def describe(holder: dict | None) -> str:
    if not holder:
        return "another process"
    return f"host {holder.get('host')}, pid {holder.get('pid')} (since {holder.get('started', '?')})"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class _Heartbeat:
    """One daemon thread per process that touches every held lock file."""

    def __init__(self):
        self.files: weakref.WeakSet = weakref.WeakSet()
        self._thread: threading.Thread | None = None
        self._guard = threading.Lock()

    def add(self, lock: FileLock) -> None:
        with self._guard:
            self.files.add(lock)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="skinlesion-lock-heartbeat", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            time.sleep(HEARTBEAT_S)
            for lock in list(self.files):
                lock.touch()


_HEARTBEAT = _Heartbeat()


class FileLock:
    """An exclusive, non-reentrant lock on ``path`` (see the module docstring). ``acquire`` raises :class:`Held`
    when someone else holds it and ``blocking`` is false; ``blocking`` waits, calling ``on_wait(holder)`` once."""

    def __init__(self, path: str | os.PathLike, what: str = "lock"):
        self.path, self.what = Path(path), what
        self._file = None        # the flock'ed file, open while held
        self._held_file: Path | None = None   # the fallback's exclusive file
        self.holder: dict | None = None

    # --- holding ---------------------------------------------------------------------------------------------
    def acquire(self, blocking: bool = True, poll_s: float = 0.5,
                on_wait: Callable[[dict | None], None] | None = None) -> FileLock:
        waited = False
        while True:
            try:
                self._try()
                return self
            except Held as e:
                if not blocking:
                    raise
                if not waited and on_wait is not None:
                    on_wait(e.holder)
                waited = True
                time.sleep(poll_s)

    def release(self) -> None:
        _HEARTBEAT.files.discard(self)
        if self._file is not None:
            try:
                self._file.seek(0)
                self._file.truncate()
                fcntl.flock(self._file, fcntl.LOCK_UN)
            finally:
                self._file.close()
                self._file = None
        if self._held_file is not None:
            self._held_file.unlink(missing_ok=True)
            self._held_file = None

    def __enter__(self) -> FileLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    @property
    def fileno(self) -> int | None:
        """The locked file's descriptor (flock mode): a child process that inherits it holds the lock too."""
        return None if self._file is None else self._file.fileno()

    def touch(self) -> None:
        target = self._held_file or (self.path if self._file is not None else None)
        if target is not None:
            try:
                os.utime(target)
            except OSError:
                pass

    def record(self, **extra) -> None:
        """Rewrite the holder record (e.g. the pid of the process that now uses what the lock guards)."""
        self.holder = {**(self.holder or {}), **extra}
        data = json.dumps(self.holder).encode()
        if self._file is not None:
            self._file.seek(0)
            self._file.truncate()
            self._file.write(data.decode())
            self._file.flush()
        elif self._held_file is not None:
            self._held_file.write_bytes(data)

    # --- internals -------------------------------------------------------------------------------------------
    def _me(self) -> dict:
        return {"host": platform.node(), "pid": os.getpid(), "started": datetime.now().isoformat(timespec="seconds")}

    def _try(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if fcntl is not None:
            f = open(self.path, "a+")   # noqa: SIM115  (kept open while the lock is held)
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read(self.path)
                f.close()
                raise Held(self.path, holder) from None
            except OSError as e:
                f.close()
                if e.errno not in _NO_FLOCK:
                    raise
                _say_fallback(self.path, e)
            else:
                holder = _read(self.path)
                if holder and holder.get("host") != platform.node() and not _stale(self.path):
                    fcntl.flock(f, fcntl.LOCK_UN)   # node-local flock: the other node's holder is alive
                    f.close()
                    raise Held(self.path, holder)
                self._file = f
                self.record(**self._me())
                _HEARTBEAT.add(self)
                return
        self._try_exclusive()

    def _try_exclusive(self) -> None:
        held = self.path.with_name(self.path.name + ".held")
        for _ in range(2):
            try:
                fd = os.open(held, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = _read(held)
                mine = holder.get("host") == platform.node() if holder else False
                dead = (mine and not _alive(int(holder.get("pid", -1)))) or _stale(held)
                if not dead:
                    raise Held(self.path, holder) from None
                held.unlink(missing_ok=True)   # its holder is gone: take it over
                continue
            os.close(fd)
            self._held_file = held
            self.record(**self._me())
            _HEARTBEAT.add(self)
            return
        raise Held(self.path, _read(held))


def _read(path: Path) -> dict | None:
    try:
        text = path.read_text()
    except OSError:
        return None
    try:
        return json.loads(text) if text.strip() else None
    except ValueError:
        return None


def _stale(path: Path) -> bool:
    try:
        return time.time() - path.stat().st_mtime > STALE_S
    except OSError:
        return True


def _say_fallback(path: Path, error: OSError) -> None:
    global _said_fallback
    if not _said_fallback:
        _said_fallback = True
        log.warning("flock does not work on the filesystem of %s (%s); locks use exclusive lock files with a "
                    "heartbeat instead (stale after %.0f s)", path.parent, os.strerror(error.errno), STALE_S)


@contextmanager
def hold(path: str | os.PathLike, what: str, wait: bool = True) -> Iterator[FileLock]:
    """Hold the lock ``path`` for the block. ``wait``: wait for it, saying once in one line who holds it; else raise
    :class:`Held` at once."""
    lock = FileLock(path, what)
    lock.acquire(blocking=wait, on_wait=lambda h: log.info("waiting for the %s held by %s", what, describe(h)))
    try:
        yield lock
    finally:
        lock.release()

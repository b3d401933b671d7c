"""The learned router's file, watched so a new router is served without a restart.

The routing loop ends with copying a newly trained router over `routing.learned.path`;
the ingress polls the file every `routing.learned.reload_s` (`Ingress._reload_router`)
and swaps the new router in. What makes that safe:

- A poll costs one `stat` while the file is unchanged. When its mtime or size moved, the
  bytes are hashed: a file touched or copied again with the same content is not
  reloaded.
- The new router is loaded and validated completely (with the `.npz` beside the JSON
  that some families have, see `routing.router_file`), off the event loop, before it
  replaces the old one in a single assignment (`Planning.use_learned`), so a request
  sees either router, never a half-loaded one.
- A file that does not load (half copied, hand-edited, from another embedding model, or
  deleted) leaves the router in use serving, with one warning per broken version. It is
  tried again at every poll until it loads, so a copy that completes later, or a second
  file the router refers to that arrives after it, is picked up.

Ray-free, so it is tested as plain code (`tests/unit/test_router_reload.py`).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Generic, TypeVar

logger = logging.getLogger(__name__)

Router = TypeVar("Router")


class WatchedRouterFile(Generic[Router]):
    """One router file: loads it, then reports a new version when its content changes."""

    def __init__(self, path: str | Path, load: Callable[[Path], Router]) -> None:
        self.path = Path(path)
        self._load = load
        self._stat: tuple[int, int] | None = None  # (mtime_ns, size) of the version in use
        self.sha256: str | None = None  # of the version in use
        self._broken: str | None = None  # sha256 (or error) last warned about
        self.reloads = 0

    def load(self) -> Router:
        """The router in the file now; raises when it does not load (start-up fails loudly)."""
        stat, digest = self._version()
        router = self._load(self.path)
        self._stat, self.sha256 = stat, digest
        return router

    def poll(self) -> Router | None:
        """A new router when the file's content changed and loads; None otherwise."""
        try:
            stat = self._signature()
            if stat == self._stat:
                return None
            _, digest = self._version()
        except OSError as exc:
            self._warn(f"oserror:{exc.errno}", f"cannot read it ({exc.strerror})")
            return None
        if digest == self.sha256:
            self._stat = stat  # touched or copied again: same router
            return None
        try:
            router = self._load(self.path)
        except Exception as exc:  # noqa: BLE001 - any invalid file keeps the router in use
            self._warn(digest, f"it does not load ({exc})")
            return None
        self._stat, self.sha256, self._broken = stat, digest, None
        self.reloads += 1
        logger.info("learned router reloaded from %s (sha256 %s)", self.path, digest[:12])
        return router

    def _signature(self) -> tuple[int, int]:
        st = os.stat(self.path)
        return st.st_mtime_ns, st.st_size

    def _version(self) -> tuple[tuple[int, int], str]:
        """(mtime_ns, size) and sha256 of the file now; the stat is taken first, so a write
        that lands while hashing shows up as a changed file at the next poll."""
        stat = self._signature()
        digest = hashlib.sha256(self.path.read_bytes()).hexdigest()
        return stat, digest

    def _warn(self, key: str, why: str) -> None:
        if key != self._broken:
            logger.warning(
                "learned router file %s changed but %s; still serving the router loaded "
                "before (sha256 %s)",
                self.path,
                why,
                (self.sha256 or "?")[:12],
            )
            self._broken = key

"""Writing a file whole: a reader sees the old file or the new one, never half of one.

Used by ``checkpoint.save_pretrained`` and the trainer (book chapter "Assembling PaliGemma").

The new contents go to a temporary file in the same folder, which then replaces the target in one
step (``os.replace`` is atomic on POSIX). A temporary file is created readable by its owner only
(mode 0o600, so nobody reads it half-written); before the swap it gets the mode any new file of the
user gets, 0o666 without the bits of the umask (0o644 under the usual umask 0o022).
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# The temporary file of ``atomic_write(folder / NAME)``: ``NAME.XXXXXXXX.tmp`` beside it (mkstemp puts
# 8 characters of [a-z0-9_] between prefix and suffix). A kill can leave one behind.
TEMPORARY_FILE = re.compile(r"(?P<name>.+)\.[a-z0-9_]{8}\.tmp")


@contextmanager
def atomic_write(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; once the block has written it, it replaces ``path``.

    If the block raises, ``path`` is left as it was and the temporary file is removed.

        with atomic_write(folder / "model.safetensors") as temporary:
            save_file(tensors, temporary)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=f"{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    temporary = Path(name)
    try:
        yield temporary
        with open(temporary, "rb") as file:
            os.fsync(file.fileno())  # on disk before the rename, so a crash cannot leave an empty file
        os.chmod(temporary, 0o666 & ~current_umask())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def current_umask() -> int:
    """The process's umask: the permission bits new files do not get.

    Read from /proc/self/status where the system shows it (Linux); elsewhere POSIX can only read it
    by setting it, so it is set and at once set back.
    """
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        status = ""
    for line in status.splitlines():
        if line.startswith("Umask:"):
            return int(line.split()[1], 8)
    umask = os.umask(0o022)
    os.umask(umask)
    return umask

"""Where each OS keeps a user's cache, as platformdirs' user_cache_dir puts it.

A dozen lines do not justify a dependency: these are the three conventions k3bundle runs under
(Linux and the other Unixes follow XDG; Windows as platformdirs with appauthor=False), resolved
from a platform name and an environment the caller may pass in, so each platform's answer is
testable on any machine.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path, PurePath, PurePosixPath, PureWindowsPath
from typing import Mapping, Optional


def user_cache_dir(
    app: str, platform: str = sys.platform, env: Optional[Mapping[str, str]] = None, home: str = ""
) -> PurePath:
    """`app`'s cache: XDG on Linux, ~/Library/Caches on macOS, %LOCALAPPDATA% on Windows."""
    env = os.environ if env is None else env
    home = home or str(Path.home())
    if platform == "win32":
        local = env.get("LOCALAPPDATA") or str(PureWindowsPath(home, "AppData", "Local"))
        return PureWindowsPath(local, app, "Cache")
    if platform == "darwin":
        return PurePosixPath(home, "Library", "Caches", app)
    xdg = env.get("XDG_CACHE_HOME", "").strip() or str(PurePosixPath(home, ".cache"))
    return PurePosixPath(xdg, app)

"""When Tune's pickled state may be loaded: only from a folder no other user can write.

``Tuner.restore`` unpickles the experiment it resumes (``tuner.pkl``, the searcher's
state, the trials in ``experiment_state-*.json``): whoever can write that folder can
run code in the driver. raypipe creates the search's working folder itself, private
to the user who runs the pipeline (mode 0700), and resumes a search only if the folder
still is: it and everything in it owned by this user, the folder shut to everyone else,
no symbolic links. Anything else is not resumed; the search starts again (see
``search.run_search``). Files inside may carry the umask's modes: nobody else can
reach them through a 0700 folder.
"""
from __future__ import annotations

import os
import stat


def make_private(folder: str) -> None:
    """Create ``folder`` (and its parents) and shut it to every other user (mode 0700)."""
    os.makedirs(folder, exist_ok=True)
    os.chmod(folder, 0o700)  # makedirs' mode is masked by the umask


def why_untrusted(folder: str) -> str | None:
    """Why Tune's state in ``folder`` must not be unpickled, or None if only this user could have written it."""
    uid = os.getuid()
    top = os.lstat(folder)
    if stat.S_ISLNK(top.st_mode):
        return f"{folder} is a symbolic link"
    if top.st_uid != uid:
        return f"{folder} belongs to uid {top.st_uid}, not to this user (uid {uid})"
    if stat.S_IMODE(top.st_mode) & 0o077:
        return f"{folder} is open to other users (mode {stat.S_IMODE(top.st_mode):o}; raypipe makes it 700)"
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = os.path.join(root, name)
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                return f"{path} is a symbolic link"
            if st.st_uid != uid:
                return f"{path} belongs to uid {st.st_uid}, not to this user (uid {uid})"
    return None

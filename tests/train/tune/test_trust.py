"""Tune's pickled state is resumed only from a folder no other user could have written."""
from __future__ import annotations

import os
import stat

from raypipe.train.tune.trust import make_private, why_untrusted


def _search_folder(tmp_path):
    work = tmp_path / "work" / "tune" / "abc"
    make_private(str(work))
    (work / "tune").mkdir()
    (work / "tune" / "tuner.pkl").write_bytes(b"state")
    (work / "tune" / "trial_0").mkdir()
    (work / "tune" / "trial_0" / "result.json").write_text("{}")
    return work


def test_a_folder_raypipe_made_is_trusted(tmp_path):
    work = _search_folder(tmp_path)
    assert stat.S_IMODE(work.stat().st_mode) == 0o700  # whatever the umask
    assert why_untrusted(str(work)) is None
    os.chmod(work / "tune" / "tuner.pkl", 0o666)  # a file's own mode does not matter behind a 0700 folder
    assert why_untrusted(str(work)) is None


def test_make_private_shuts_an_existing_folder(tmp_path):
    work = tmp_path / "w"
    work.mkdir(mode=0o777)
    os.chmod(work, 0o777)
    make_private(str(work))
    assert stat.S_IMODE(work.stat().st_mode) == 0o700


def test_a_folder_open_to_others_is_not(tmp_path):
    work = _search_folder(tmp_path)
    os.chmod(work, 0o755)
    why = why_untrusted(str(work))
    assert why and "open to other users" in why and "755" in why


def test_a_symbolic_link_inside_is_not(tmp_path):
    work = _search_folder(tmp_path)
    elsewhere = tmp_path / "elsewhere.pkl"
    elsewhere.write_bytes(b"planted")
    os.symlink(elsewhere, work / "tune" / "searcher-state.pkl")
    why = why_untrusted(str(work))
    assert why and "searcher-state.pkl is a symbolic link" in why


def test_the_folder_itself_as_a_link_is_not(tmp_path):
    work = _search_folder(tmp_path)
    link = tmp_path / "link"
    os.symlink(work, link)
    assert "is a symbolic link" in why_untrusted(str(link))


def test_files_of_another_user_are_not(tmp_path, monkeypatch):
    work = _search_folder(tmp_path)
    me = os.getuid()
    monkeypatch.setattr(os, "getuid", lambda: me + 1)  # as seen by another user, every file is foreign
    why = why_untrusted(str(work))
    assert why and f"belongs to uid {me}" in why


def test_one_file_of_another_user_inside_is_not(tmp_path, monkeypatch):
    work = _search_folder(tmp_path)
    planted = str(work / "tune" / "tuner.pkl")
    real_lstat = os.lstat

    def lstat(path):  # chown needs root: show the walk a file owned by someone else
        st = real_lstat(path)
        if str(path) != planted:
            return st
        fields = list(st)
        fields[stat.ST_UID] = st.st_uid + 1
        return os.stat_result(fields)

    monkeypatch.setattr(os, "lstat", lstat)
    why = why_untrusted(str(work))
    assert why and why.startswith(f"{planted} belongs to uid {os.getuid() + 1}")


def _saved_search(tmp_path):
    from raypipe.store import Store

    work_store = Store(tmp_path / "store").sub("work/tune/abc")
    make_private(work_store.path())
    path = os.path.join(work_store.path(), "tune")
    os.makedirs(path)
    with open(os.path.join(path, "tuner.pkl"), "wb") as f:  # what Tuner.can_restore looks for
        f.write(b"state")
    return work_store, path


def test_a_private_saved_search_is_resumed(tmp_path):
    from raypipe.train.tune.search import resumable

    work_store, path = _saved_search(tmp_path)
    logs: list[str] = []
    assert resumable(work_store, path, forced=False, log=logs.append)
    assert os.path.exists(os.path.join(path, "tuner.pkl")) and not logs


def test_an_open_saved_search_starts_again_private(tmp_path):
    from raypipe.train.tune.search import resumable

    work_store, path = _saved_search(tmp_path)
    os.chmod(work_store.path(), 0o777)
    logs: list[str] = []
    assert not resumable(work_store, path, forced=False, log=logs.append)
    assert not os.path.exists(path)  # the old state is gone, never loaded
    assert stat.S_IMODE(os.stat(work_store.path()).st_mode) == 0o700
    assert len(logs) == 1 and "not resuming" in logs[0] and "open to other users (mode 777" in logs[0]


def test_force_starts_again_and_a_fresh_folder_is_private(tmp_path):
    from raypipe.store import Store
    from raypipe.train.tune.search import resumable

    work_store, path = _saved_search(tmp_path)
    assert not resumable(work_store, path, forced=True, log=print)
    assert not os.path.exists(path)
    fresh = Store(tmp_path / "other").sub("work/tune/def")
    assert not resumable(fresh, os.path.join(fresh.path(), "tune"), forced=False, log=print)
    assert stat.S_IMODE(os.stat(fresh.path()).st_mode) == 0o700

"""Which frames are the user's: installed libraries are skipped, the user's project is not."""
import importlib
import os
import sys

from gradscope.tracing.locations import code_location, is_installed_file, user_location

LIBRARY = '''
def call(fn):
    return fn()   # a library calling back into gradscope, as a Trainer's loop does
'''


def _module(tmp_path, folder, name):
    path = tmp_path / folder
    path.mkdir(parents=True)
    (path / f"{name}.py").write_text(LIBRARY)
    sys.path.insert(0, str(path))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(path))
        sys.modules.pop(name, None)


def test_an_installed_library_is_skipped_for_the_users_line(tmp_path):
    lib = _module(tmp_path, "venv/lib/python3.11/site-packages", "fakelib_gs16")
    line = sys._getframe().f_lineno + 1
    where = lib.call(user_location), lib.call(code_location)
    assert where[0].endswith(f"test_locations.py:{line}")  # the call into the library
    assert "site-packages" in where[1] and where[1].endswith("fakelib_gs16.py:3")
    assert is_installed_file(lib.__file__)
    debian = tmp_path / "usr/lib/python3/dist-packages/x.py"
    assert is_installed_file(str(debian))


def test_the_users_own_package_is_kept_even_when_installed_editable(tmp_path):
    # an editable install runs the files from the project's source tree
    lib = _module(tmp_path, "project/src", "mypkg_gs16")
    where = lib.call(user_location)
    assert where.endswith("mypkg_gs16.py:3")
    assert not is_installed_file(lib.__file__)


def test_display_paths_follow_the_directory_they_were_made_for(tmp_path, monkeypatch):
    # the working directory is cached for a moment; what is shown must be relative to the
    # directory its cache entry names, and a removed directory must not raise into user code
    from gradscope.tracing.locations import display_path, refresh_cwd

    (tmp_path / "sub").mkdir()
    train = str(tmp_path / "train_gs18.py")
    monkeypatch.chdir(tmp_path)
    refresh_cwd()
    assert display_path(train) == "train_gs18.py"
    os.chdir(tmp_path / "sub")  # within the cache's moment: still shown against tmp_path
    assert display_path(str(tmp_path / "other_gs18.py")) == "other_gs18.py"
    refresh_cwd()
    assert display_path(train) == train  # outside the new directory: the absolute path
    os.chdir(tmp_path)
    refresh_cwd()
    assert display_path(str(tmp_path / "other_gs18.py")) == "other_gs18.py"  # not stuck
    gone = tmp_path / "gone"
    gone.mkdir()
    os.chdir(gone)
    refresh_cwd()
    display_path(train)  # caches the directory
    gone.rmdir()
    assert display_path(str(tmp_path / "third_gs18.py")).endswith("third_gs18.py")
    refresh_cwd()
    assert display_path(str(tmp_path / "fourth_gs18.py")).endswith("fourth_gs18.py")

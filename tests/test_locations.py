"""Which frames are the user's: installed libraries are skipped, the user's project is not."""
import importlib
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

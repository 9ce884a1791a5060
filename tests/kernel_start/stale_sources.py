# tests/sessions.rs: the start cache serves a module's recorded code only
# while its source is the one recorded; a changed source loads as usual.
import importlib.util
import os
import py_compile
import sys
import tempfile

import _code_interpreter_start_cache as start_cache

directory = tempfile.mkdtemp()
sys.path.insert(0, directory)
for name in ("kept", "edited"):
    source = os.path.join(directory, name + ".py")
    with open(source, "w", encoding="ascii") as file:
        file.write(f'WHO = "{name}, recorded"\n')
    py_compile.compile(source, cfile=importlib.util.cache_from_source(source), doraise=True)
import edited  # noqa: E402,F401
import kept  # noqa: E402,F401

start_cache.Recorder().write(os.path.join(directory, "cache.bin"), roots=(directory + "/",))
with open(os.path.join(directory, "edited.py"), "w", encoding="ascii") as file:
    file.write('WHO = "edited, changed since"\n')
del sys.modules["kept"], sys.modules["edited"]

cache = start_cache.StartCache(os.path.join(directory, "cache.bin"))
cache.install()
try:
    import edited  # noqa: E402,F811
    import kept  # noqa: E402,F811
finally:
    cache.uninstall()
print(kept.WHO, type(kept.__loader__).__name__, "|", edited.WHO)

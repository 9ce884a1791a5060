"""_code_interpreter_start_cache — what every kernel start computes the same
way, computed once at image build.

worker-kernel (the launcher) loads it while the kernel starts and removes it
before any user code runs. `worker-kernel --write-start-cache PATH`, run at
image build, starts a kernel as a worker does and records:

- the compiled code (.pyc) of every module the start loaded: a meta path
  finder serves them with one dict lookup and one file mapping, instead of a
  search of sys.path and a file opened per module. A module whose source is
  not the one recorded (mtime or size differ, as Python checks a .pyc) loads
  as usual;
- the compiled form of every regular expression the start compiled: what
  re's pure-Python parser and compiler hand to _sre.compile. Used only by the
  Python that recorded it (version and _sre.MAGIC are checked).

docs/benchmarks.md ("The cold start, piece by piece") has what each saves.
File: an 8-byte header length, the marshalled header {"python", "sre",
"modules": {name: (origin, is_package, offset, length)} (offset -1: an
extension module), "patterns": {(pattern, flags): _sre.compile's arguments
after the pattern}}, then the .pyc files.
"""

# Nothing here may load a .py module before the cache is installed: the
# cache serves re itself.
import marshal
import os
import sys

import _sre

_bootstrap = sys.modules["_frozen_importlib_external"]


def _re_compiler():
    import re._compiler  # pylint: disable=import-outside-toplevel

    return re._compiler  # pylint: disable=protected-access


class _CachedSourceLoader(_bootstrap.SourceFileLoader):
    """Python's own loader for a .py module, but the code object comes from
    the cache while the source is the one it was compiled from."""

    def __init__(self, fullname, path, cache, offset, length):
        super().__init__(fullname, path)
        self._cache, self._span = cache, (offset, offset + length)

    def get_code(self, fullname):
        pyc = self._cache.pyc(*self._span) if self._cache is not None else None
        self._cache = None
        if pyc is not None:
            try:
                source = self.path_stats(self.path)
            except OSError:
                source = None
            # The .pyc header's source mtime and size, as Python checks them.
            if source is not None and bytes(pyc[8:16]) == (
                (int(source["mtime"]) & 0xFFFFFFFF).to_bytes(4, "little")
                + (source["size"] & 0xFFFFFFFF).to_bytes(4, "little")
            ):
                return marshal.loads(pyc[16:])
        return super().get_code(fullname)


class StartCache:
    """The cache of one image, installed while a kernel starts."""

    def __init__(self, path):
        import mmap  # pylint: disable=import-outside-toplevel

        with open(path, "rb") as file:
            data = memoryview(mmap.mmap(file.fileno(), 0, prot=mmap.PROT_READ))
        self._map = data.obj
        header_len = int.from_bytes(data[:8], "little")
        header = marshal.loads(data[8 : 8 + header_len])
        self.modules = header["modules"]
        same_python = header["python"] == sys.version and header["sre"] == _sre.MAGIC
        self.patterns = header["patterns"] if same_python else {}
        self._pycs = data[8 + header_len :]
        data.release()
        self.original_compile = None

    def install(self):
        sys.meta_path.insert(0, self)
        compiler = _re_compiler()
        self.original_compile = compiler.compile
        compiler.compile = self.compile_pattern

    def uninstall(self):
        """Gone before user code: the finder, the patterns and the mapping
        (else each idle worker would count the pages it read)."""
        sys.meta_path.remove(self)
        _re_compiler().compile = self.original_compile
        self.modules, self.patterns = {}, {}
        self._pycs.release()
        self._pycs = None
        try:
            self._map.close()
        except BufferError:
            pass  # a view of it still alive somewhere: it goes with that view

    def pyc(self, start, end):
        """The .pyc bytes at start:end, or None once uninstalled."""
        return None if self._pycs is None else self._pycs[start:end]

    def find_spec(self, name, path=None, target=None):  # pylint: disable=unused-argument
        entry = self.modules.get(name)
        if entry is None:
            return None
        origin, package, offset, length = entry
        if offset < 0:
            if not _bootstrap._path_isfile(origin):  # pylint: disable=protected-access
                return None
            loader = _bootstrap.ExtensionFileLoader(name, origin)
        else:
            loader = _CachedSourceLoader(name, origin, self, offset, length)
        locations = [os.path.dirname(origin)] if package else None
        return _bootstrap.spec_from_file_location(
            name, origin, loader=loader, submodule_search_locations=locations
        )

    def compile_pattern(self, pattern, flags=0):
        """re._compiler.compile, from the cache when the pattern is in it."""
        entry = self.patterns.get((pattern, flags)) if isinstance(pattern, (str, bytes)) else None
        if entry is None:
            return self.original_compile(pattern, flags)
        return _sre.compile(pattern, *entry)


class Recorder:
    """Image build: records the regular expressions compiled while a kernel
    starts, then writes the cache of that start."""

    def __init__(self):
        self.patterns = {}
        self.compiler = _re_compiler()
        self.original_compile = self.compiler.compile

    def install(self):
        self.compiler.compile = self.compile_pattern

    def uninstall(self):
        self.compiler.compile = self.original_compile

    def compile_pattern(self, pattern, flags=0):
        """re._compiler.compile (Python 3.11), keeping what goes to _sre."""
        if not isinstance(pattern, (str, bytes)) or flags & self.compiler.SRE_FLAG_DEBUG:
            return self.original_compile(pattern, flags)
        parsed = self.compiler._parser.parse(pattern, flags)  # pylint: disable=protected-access
        code = self.compiler._code(parsed, flags)  # pylint: disable=protected-access
        groupindex = dict(parsed.state.groupdict)
        indexgroup = [None] * parsed.state.groups
        for name, index in groupindex.items():
            indexgroup[index] = name
        # Plain ints: the opcodes are an int subclass, which marshal refuses.
        code = [int(word) for word in code]
        groups = parsed.state.groups - 1
        entry = (int(flags | parsed.state.flags), code, groups, groupindex, tuple(indexgroup))
        self.patterns[(pattern, int(flags))] = entry
        return _sre.compile(pattern, *entry)

    def write(self, path, roots=(sys.base_prefix + "/lib/python3", sys.prefix + "/")):
        """Writes the cache: the modules loaded now from a .py (with a .pyc)
        or an extension file under ROOTS (this Python and its venv), and the
        patterns."""
        modules, pycs, offset = {}, [], 0
        for name, module in sorted(sys.modules.items()):
            spec = getattr(module, "__spec__", None)
            if spec is None or not spec.has_location or not spec.origin:
                continue
            if not spec.origin.startswith(roots):
                continue
            package = spec.submodule_search_locations is not None
            if package and list(spec.submodule_search_locations) != [os.path.dirname(spec.origin)]:
                continue
            # Exactly Python's loaders: not a stand-in, not another cache.
            kind = type(spec.loader)
            if kind is _bootstrap.ExtensionFileLoader:
                modules[name] = (spec.origin, package, -1, 0)
            elif kind is _bootstrap.SourceFileLoader and spec.cached:
                try:
                    with open(spec.cached, "rb") as file:
                        pyc = file.read()
                except FileNotFoundError:
                    continue  # compiled at every start (no .pyc written): not ours to add
                modules[name] = (spec.origin, package, offset, len(pyc))
                pycs.append(pyc)
                offset += len(pyc)
        header = marshal.dumps(
            {"python": sys.version, "sre": _sre.MAGIC, "modules": modules, "patterns": self.patterns}
        )
        with open(path, "wb") as file:
            file.write(len(header).to_bytes(8, "little") + header + b"".join(pycs))


def check(path):
    """`python -m _code_interpreter_start_cache PATH` (image build): fails
    when the cache would serve nothing, or when a recorded pattern is not
    what re compiles (compiled patterns compare by their code)."""
    cache = StartCache(path)
    compile_pattern = _re_compiler().compile
    wrong = [
        key for key, entry in cache.patterns.items() if _sre.compile(key[0], *entry) != compile_pattern(*key)
    ]
    print(f"{path}: {len(cache.modules)} modules, {len(cache.patterns)} patterns")
    if not cache.modules or not cache.patterns or wrong:
        sys.exit(f"{path}: empty start cache, or patterns that re compiles otherwise: {wrong[:5]}")


if __name__ == "__main__":
    check(sys.argv[1])

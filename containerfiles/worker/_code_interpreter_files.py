"""File transfer for the code-interpreter gateway, run inside the user's kernel.

The gateway's /files API calls these functions through silent executions, so
every file operation runs as the unprivileged sandbox user, inside the
worker, confined to the work directory. Paths are walked one component at a
time with O_NOFOLLOW relative to the previous directory's descriptor: a
symlink anywhere in the path is refused, so nothing outside the work
directory can be reached, and only regular files are read or written.
Errors are raised as FileApiError with a stable code the gateway maps to a
status (bad_path 400, not_found 404, no_space 413, too_large 413).
"""

import base64
import errno
import json
import os
import stat

ROOT = os.environ.get("HOME", "/sandbox")


class FileApiError(Exception):
    def __init__(self, code, message):
        super().__init__(f"{code}: {message}")
        self.code = code


def _parts(path):
    if not isinstance(path, str) or not path or "\0" in path or path.startswith("/"):
        raise FileApiError("bad_path", "the path must be relative to the work directory")
    parts = path.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise FileApiError("bad_path", "empty, '.' and '..' path components are not allowed")
    return parts


def _open_dir(parts, create):
    """A descriptor of the directory holding the last part of the path."""
    fd = os.open(ROOT, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for part in parts[:-1]:
            if create:
                try:
                    os.mkdir(part, 0o755, dir_fd=fd)
                except FileExistsError:
                    pass
            try:
                nxt = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            except FileNotFoundError:
                raise FileApiError("not_found", f"no directory {part!r}")
            except OSError as e:
                raise FileApiError("bad_path", f"{part!r} is not a directory (symlinks are refused): {e.strerror}")
            # gVisor (runsc 20221219) follows a symlink despite O_NOFOLLOW
            # when O_DIRECTORY is set: the entry itself must be a directory,
            # and the very one opened.
            try:
                entry = os.stat(part, dir_fd=fd, follow_symlinks=False)
                opened = os.fstat(nxt)
                if not stat.S_ISDIR(entry.st_mode) or (entry.st_dev, entry.st_ino) != (opened.st_dev, opened.st_ino):
                    raise FileApiError("bad_path", f"{part!r} is not a directory (symlinks are refused)")
            except BaseException:
                os.close(nxt)
                raise
            os.close(fd)
            fd = nxt
        return fd
    except BaseException:
        os.close(fd)
        raise


def _open_file(path, flags, mode=0o644):
    parts = _parts(path)
    dir_fd = _open_dir(parts, create=bool(flags & os.O_CREAT))
    try:
        fd = os.open(parts[-1], flags | os.O_NOFOLLOW | os.O_NONBLOCK, mode, dir_fd=dir_fd)
    except FileNotFoundError:
        raise FileApiError("not_found", f"no file {path!r}")
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.EISDIR, errno.ENOTDIR, errno.ENXIO):
            raise FileApiError("bad_path", f"{path!r} is not a regular file (symlinks are refused)")
        raise
    finally:
        os.close(dir_fd)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise FileApiError("bad_path", f"{path!r} is not a regular file")
    return fd


class _Reply:
    """A JSON answer whose repr is the JSON itself: the gateway reads it from
    the `text/plain` of a user expression."""

    def __init__(self, value):
        self.text = json.dumps(value)

    def __repr__(self):
        return self.text


def _guard(function):
    def wrapped(*args):
        try:
            return _Reply({"ok": function(*args)})
        except FileApiError as e:
            return _Reply({"error": e.code, "detail": str(e)})
        except OSError as e:
            code = {errno.ENOSPC: "no_space", errno.EFBIG: "too_large", errno.EDQUOT: "no_space"}.get(e.errno, "os_error")
            return _Reply({"error": code, "detail": e.strerror or str(e)})

    return wrapped


@_guard
def write(path, offset, data_b64):
    """Writes a chunk; offset 0 creates or truncates the file."""
    flags = os.O_WRONLY | (os.O_CREAT | os.O_TRUNC if offset == 0 else 0)
    fd = _open_file(path, flags)
    try:
        data = base64.b64decode(data_b64)
        os.lseek(fd, offset, os.SEEK_SET)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        return offset + len(data)
    finally:
        os.close(fd)


@_guard
def read(path, offset, size):
    """Reads a chunk; returns its base64 and the file's total size."""
    fd = _open_file(path, os.O_RDONLY)
    try:
        total = os.fstat(fd).st_size
        os.lseek(fd, offset, os.SEEK_SET)
        return {"data": base64.b64encode(os.read(fd, size)).decode(), "size": total}
    finally:
        os.close(fd)


@_guard
def delete(path):
    parts = _parts(path)
    dir_fd = _open_dir(parts, create=False)
    try:
        st = os.stat(parts[-1], dir_fd=dir_fd, follow_symlinks=False)
        if stat.S_ISDIR(st.st_mode):
            raise FileApiError("bad_path", f"{path!r} is a directory")
        os.unlink(parts[-1], dir_fd=dir_fd)
        return True
    except FileNotFoundError:
        raise FileApiError("not_found", f"no file {path!r}")
    finally:
        os.close(dir_fd)


@_guard
def listing():
    """Regular files under the work directory (not following symlinks): at most
    10000, and at most 1 MiB of names, so the answer stays well within the
    4 MiB the gateway reads of one helper answer (a larger one would be taken
    for a misbehaving worker)."""
    files = []
    names_bytes = 0
    for top, dirs, names in os.walk(ROOT):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and not os.path.islink(os.path.join(top, d)))
        for name in sorted(names):
            full = os.path.join(top, name)
            st = os.lstat(full)
            if stat.S_ISREG(st.st_mode) and not name.startswith("."):
                rel = os.path.relpath(full, ROOT)
                names_bytes += len(rel.encode("utf-8", "surrogateescape"))
                if len(files) >= 10000 or names_bytes > 1024 * 1024:
                    return files
                files.append({"name": rel, "size": st.st_size, "modified": st.st_mtime})
    return files
    return files

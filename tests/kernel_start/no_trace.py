# tests/sessions.rs: after the kernel started, nothing of the launcher's
# start cache or deferred modules is left for user code to meet.
import importlib.machinery
import importlib.util
import inspect
import os
import re
import sys
import types

import ipykernel.kernelapp as kernelapp

print("finder", [type(f).__name__ for f in sys.meta_path if "StartCache" in type(f).__name__])
print("re", re._compiler.compile.__module__)
loader = kernelapp.__loader__
print("loader", type(loader).__name__, isinstance(loader, importlib.machinery.SourceFileLoader))
print("source", kernelapp.__file__, "class IPKernelApp" in inspect.getsource(kernelapp))

import asyncio.base_events as base_events  # noqa: E402
import asyncio.selector_events as selector_events  # noqa: E402
import asyncio.sslproto as sslproto  # noqa: E402
import ctypes  # noqa: E402
import ssl  # noqa: E402

print("real", all(type(m) is types.ModuleType and hasattr(m, "__file__") for m in (ssl, sslproto, ctypes)))
print("errors", sslproto.SSLAgainErrors == (ssl.SSLWantReadError, ssl.SSLSyscallError))
print("ctypes", ctypes.CDLL(None).getpid() == os.getpid())
# asyncio's own references become the real modules at their first use; a
# lazily loaded module of the user's is not loaded by that.
spec = importlib.util.find_spec("colorsys")
spec.loader = importlib.util.LazyLoader(spec.loader)
lazy = importlib.util.module_from_spec(spec)
sys.modules["colorsys"] = lazy
spec.loader.exec_module(lazy)
print("bound", base_events.ssl.SSLSocket is ssl.SSLSocket, base_events.ssl is ssl, selector_events.ssl is ssl)
print("proto", selector_events.sslproto.SSLProtocol is sslproto.SSLProtocol, selector_events.sslproto is sslproto)
print("lazy", type(lazy).__name__)

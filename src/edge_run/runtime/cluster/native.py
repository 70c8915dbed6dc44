"""llama.cpp's RPC backend loaded into this process, beside llama_cpp's own ggml (ctypes; one instance per process).

    import llama_cpp                      loads libllama.so -> libggml.so.0, libggml-base.so.0, libggml-cpu.so.0
    ctypes.CDLL(libggml-rpc.so)           build.py's library; its libggml-base.so.0 binds to the loaded copy
    ggml_backend_rpc_add_server(ep)       connects, asks the worker's device count: a registry of RPC devices
    ggml_backend_reg_dev_get(reg, i)      the worker's device(s), handed to llama.cpp's loader as
                                          llama_model_params.devices (never put in ggml's global registry: a
                                          device left there after its worker died would hang every later load)
    ggml_backend_rpc_start_server(...)    the worker side: llama.cpp's RPC server over the CPU device

llama.cpp aborts the process when an RPC peer fails (GGML_ABORT in ggml-rpc.cpp): :func:`on_rpc_abort` routes
those aborts to a Python handler first (ggml_set_abort_callback), which is expected to end the process itself.
"""

from __future__ import annotations

import contextlib
import ctypes
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from edge_run.core.errors import ClusterError
from edge_run.runtime.cluster.build import (
    BUILD_COMMAND,
    RpcBuild,
    build_rpc_library,
    cached_rpc_library,
    installed_llama_version,
    llama_lib_dir,
    read_stamp,
)

GGML_BACKEND_DEVICE_TYPE_CPU = 0  # ggml-backend.h enum ggml_backend_dev_type
ABORT_CALLBACK = ctypes.CFUNCTYPE(None, ctypes.c_char_p)
RPC_SOURCE = "ggml-rpc.cpp"  # GGML_ABORT messages start with "<file>:<line>: "


@dataclass
class RpcRuntime:
    build: RpcBuild
    rpc: Any  # ctypes.CDLL of libggml-rpc.so
    ggml: Any  # the loaded libggml (registry)
    base: Any  # the loaded libggml-base

    @property
    def protocol(self) -> tuple[int, int, int]:
        return self.build.protocol


_lock = threading.Lock()
_runtime: RpcRuntime | None = None
_registered: dict[str, int] = {}  # endpoint -> the registry handle llama.cpp made for it
_model_lock = threading.Lock()  # one load with explicit devices at a time (model_devices patches llama_cpp)
_abort_hooks: list[Any] = []  # the ctypes callback objects must outlive the process's last abort


def _loaded_name(prefix: str) -> str:
    """The name libllama needs a ggml library by (libggml.so.0, or libggml.so in edge-run's Pi wheel): ctypes
    given that name returns the copy the dynamic loader already holds instead of loading a second one."""
    from edge_run.runtime.bundle.elf import read_elf
    from edge_run.runtime.cluster.build import llama_lib_dir

    needed = read_elf(llama_lib_dir() / "libllama.so").needed
    return next((n for n in needed if n == f"{prefix}.so" or n.startswith(f"{prefix}.so.")), f"{prefix}.so.0")


def _bind(rpc: Any, ggml: Any, base: Any) -> None:
    vp, cp, sz = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t
    rpc.ggml_backend_rpc_add_server.restype = vp
    rpc.ggml_backend_rpc_add_server.argtypes = [cp]
    rpc.ggml_backend_rpc_start_server.restype = None
    rpc.ggml_backend_rpc_start_server.argtypes = [cp, cp, sz, sz, ctypes.POINTER(vp)]
    ggml.ggml_backend_register.restype = None
    ggml.ggml_backend_register.argtypes = [vp]
    ggml.ggml_backend_reg_dev_count.restype = sz
    ggml.ggml_backend_reg_dev_count.argtypes = [vp]
    ggml.ggml_backend_reg_dev_get.restype = vp
    ggml.ggml_backend_reg_dev_get.argtypes = [vp, sz]
    ggml.ggml_backend_dev_by_type.restype = vp
    ggml.ggml_backend_dev_by_type.argtypes = [ctypes.c_int]
    ggml.ggml_backend_dev_count.restype = sz
    ggml.ggml_backend_dev_count.argtypes = []
    ggml.ggml_backend_dev_get.restype = vp
    ggml.ggml_backend_dev_get.argtypes = [sz]
    ggml.ggml_backend_dev_name.restype = cp
    ggml.ggml_backend_dev_name.argtypes = [vp]
    ggml.ggml_backend_dev_description.restype = cp
    ggml.ggml_backend_dev_description.argtypes = [vp]
    base.ggml_set_abort_callback.restype = vp
    base.ggml_set_abort_callback.argtypes = [ABORT_CALLBACK]
    base.ggml_version.restype = cp
    base.ggml_version.argtypes = []


def bundled_rpc_library() -> RpcBuild | None:
    """libggml-rpc.so shipped in llama_cpp/lib with its stamp (edge-run's Pi wheel, bundle/llama_wheel.py);
    None for a llama-cpp-python built without RPC (PyPI's)."""
    return read_stamp(llama_lib_dir(), installed_llama_version())


def load_rpc(build: bool = True) -> RpcRuntime:
    """The RPC backend in this process (built first when ``build`` and it is not cached). ClusterError when it is
    missing (and not to be built) or was built from another ggml than the one llama_cpp loaded."""
    global _runtime
    with _lock:
        if _runtime is not None:
            return _runtime
        import llama_cpp  # noqa: F401  (loads libllama and with it the ggml libraries the RPC backend binds to)

        found = bundled_rpc_library() or (build_rpc_library() if build else cached_rpc_library())
        if found is None:
            raise ClusterError("llama.cpp's RPC library is not built for this llama-cpp-python",
                               f"run `{BUILD_COMMAND}` (cmake and a C++ compiler, about half a minute)")
        try:
            base = ctypes.CDLL(_loaded_name("libggml-base"))
            ggml = ctypes.CDLL(_loaded_name("libggml"))
            rpc = ctypes.CDLL(str(found.path))
        except OSError as e:
            raise ClusterError(f"cannot load {found.path.name} ({e})", f"rebuild it: `{BUILD_COMMAND} --force`") from e
        _bind(rpc, ggml, base)
        loaded = base.ggml_version().decode()
        if loaded != found.ggml_version:
            raise ClusterError(f"{found.path} was built from ggml {found.ggml_version}, but llama_cpp runs ggml "
                               f"{loaded}", f"rebuild it: `{BUILD_COMMAND} --force`")
        _runtime = RpcRuntime(found, rpc, ggml, base)
        return _runtime


def rpc_devices(endpoint: str) -> list[int]:
    """The devices of the worker at ``endpoint`` (host:port) as llama.cpp device handles. llama.cpp keeps one
    connection per endpoint text for the process's life, so a reconnection after a loss uses a new text for the
    same worker (host.py: leading zeros on the port). The caller has checked the worker answers (probe.py):
    llama.cpp aborts on one that does not."""
    rt = load_rpc()
    with _lock:
        reg = _registered.get(endpoint)
        if reg is None:
            reg = rt.rpc.ggml_backend_rpc_add_server(endpoint.encode())
            if not reg:
                raise ClusterError(f"the worker at {endpoint} offers no device", "restart it")
            _registered[endpoint] = reg
        return [rt.ggml.ggml_backend_reg_dev_get(reg, i) for i in range(rt.ggml.ggml_backend_reg_dev_count(reg))]


def device_name(device: int) -> str:
    rt = load_rpc()
    return str(rt.ggml.ggml_backend_dev_name(device).decode())


@contextlib.contextmanager
def model_devices(devices: list[int]) -> Iterator[None]:
    """Within: every llama_cpp.Llama loads its offloaded layers onto exactly ``devices`` (in this order:
    tensor_split indexes them) instead of every device llama.cpp knows. llama-cpp-python has no parameter for
    llama_model_params.devices, so its default-params function is wrapped for the duration of the load."""
    import llama_cpp.llama_cpp as lc

    array = (ctypes.c_void_p * (len(devices) + 1))(*devices, None)  # NULL-terminated
    address = ctypes.cast(array, ctypes.c_void_p).value
    with _model_lock:
        original = lc.llama_model_default_params

        def params() -> Any:
            p = original()
            p.devices = address
            return p

        lc.llama_model_default_params = params
        try:
            yield
        finally:
            lc.llama_model_default_params = original


def on_rpc_abort(handler: Callable[[str], None]) -> None:
    """Call ``handler(message)`` when llama.cpp's RPC client aborts (a worker went away or answered garbage),
    from whichever thread noticed. ``handler`` should end the process (os._exit): when it returns, llama.cpp
    aborts as before. Aborts from elsewhere in ggml keep ggml's own message and backtrace."""
    rt = load_rpc()

    def hook(message: bytes | None) -> None:
        text = (message or b"").decode("utf-8", "replace")
        if RPC_SOURCE in text.split(":", 1)[0]:
            handler(text.split(": ", 1)[-1].strip())
        else:
            import sys

            sys.stderr.write(text + "\n")

    callback = ABORT_CALLBACK(hook)
    _abort_hooks.append(callback)
    rt.base.ggml_set_abort_callback(callback)


def start_server(endpoint: str, threads: int, cache: str | None) -> None:
    """llama.cpp's RPC server over the CPU device at ``endpoint`` (blocks for as long as it serves; returns
    only when it could not start, e.g. the port is taken)."""
    rt = load_rpc()
    cpu = rt.ggml.ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_CPU)
    if not cpu:
        raise ClusterError("llama.cpp lists no CPU device")
    devices = (ctypes.c_void_p * 1)(cpu)
    rt.rpc.ggml_backend_rpc_start_server(endpoint.encode(), cache.encode() if cache else None, threads, 1, devices)

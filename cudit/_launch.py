"""Streams, per-device state and the kernel launch itself.

Kernels take one struct by value, which cuda.core's launch() cannot pass; the launch goes
through cuda.bindings' cuLaunchKernelEx with a pointer to the struct's bytes. Loading stays
with cuda.core. Everything a launch needs beyond this call's pointers and stream is built
once per (device, plan) into a Launcher, so a warm call makes exactly two driver calls:
cuCtxGetCurrent and cuLaunchKernelEx.
"""
from __future__ import annotations

import ctypes
import functools
import os
import threading
from dataclasses import dataclass

from . import _modules
from ._arrays import framework_of
from ._params import Params
from ._planner import POINTER_BLOCK, DeviceLimits, Plan, check_fits

# Programmatic dependent launch on sm_90+: a kernel may start while the previous one in the
# stream finishes; ours waits (griddepcontrol.wait) before its first global access.
# CUDIT_PDL=0 turns it off (the benchmark's A/B switch).
PDL = os.environ.get("CUDIT_PDL", "1") != "0"


def _check(result):
    from cuda.bindings import driver

    err = result[0]
    if err != driver.CUresult.CUDA_SUCCESS:
        _, msg = driver.cuGetErrorString(err)
        raise RuntimeError(f"CUDA error {int(err)}: {msg.decode() if msg else err}")
    return result[1] if len(result) == 2 else result[1:]


def driver_version() -> str:
    from cuda.bindings import driver

    v = _check(driver.cuDriverGetVersion())
    return f"{v // 1000}.{(v % 1000) // 10}"


@dataclass
class DeviceState:
    device: object           # cuda.core Device
    limits: DeviceLimits
    image: _modules.Image
    context: int             # the primary context's handle, as an int
    sms: int                 # multiprocessors


@functools.lru_cache(maxsize=None)
def device_state(device_id: int) -> DeviceState:
    from cuda.core import Device

    dev = Device(device_id)
    dev.set_current()
    props = dev.properties
    arch = tuple(dev.compute_capability)
    limits = DeviceLimits(
        arch=arch,
        max_threads_per_block=props.max_threads_per_block,
        max_smem_per_block=props.max_shared_memory_per_block_optin,
        max_regs_per_block=props.max_registers_per_block,
    )
    image = _modules.select_image(arch, _modules.manifest(), driver_version())
    return DeviceState(dev, limits, image, int(dev.context.handle), props.multiprocessor_count)


_pack_pointers = POINTER_BLOCK.pack_into


class Launcher:
    """One plan on one device: kernel handle, launch configuration, parameter template."""

    def __init__(self, device_id: int, p: Plan, pdl: bool):
        from cuda.bindings import driver

        st = device_state(device_id)
        check_fits(p, st.limits, _modules.kernel_meta(_modules.manifest(), st.image, p.kernel))
        kernel = _modules.load_kernel(st.image, p.kernel)
        self.kernel = kernel.handle
        self.block = (p.team, p.block // p.team)   # x: lane, y: row
        self.grid, self.smem, self.pdl = p.grid, p.smem, pdl and st.limits.arch >= (9, 0)
        self.template = with_ahead(p, kernel, st.sms)
        # Per thread: the parameter bytes (a launch copies them at once) and a launch
        # configuration per stream, so threads never share what a launch reads.
        self._tls = threading.local()
        self._context = st.context
        self.launch = self._launch_function(driver.cuLaunchKernelEx, driver.cuCtxGetCurrent)

    def _thread_state(self):
        try:
            return self._tls.args
        except AttributeError:
            blob = (ctypes.c_char * len(self.template)).from_buffer_copy(self.template)
            argv = (ctypes.c_void_p * 1)(ctypes.addressof(blob))
            self._tls.args = (blob, ctypes.addressof(argv), {}, argv)
            return self._tls.args

    def config(self, stream: int):
        """This thread's launch configuration for a stream."""
        configs = self._thread_state()[2]
        config = configs.get(stream)
        if config is None:
            if len(configs) > 64:
                configs.clear()
            config = configs[stream] = launch_config(self.grid, self.block, self.smem, self.pdl)
            from cuda.bindings import driver

            config.hStream = driver.CUstream(stream)
        return config

    def _launch_function(self, launch_kernel, current_context):
        """launch(pointers, stream): the Params pointer block set to `pointers` (POINTERS
        ints), launched on `stream`. A closure over everything it reads: it is the warm path."""
        tls, context, kernel, config_for = self._tls, self._context, self.kernel, self.config

        def launch(pointers, stream: int) -> None:
            try:
                blob, argv, configs, _ = tls.args
            except AttributeError:
                blob, argv, configs, _ = self._thread_state()
            _pack_pointers(blob, 0, *pointers)   # the rest of the bytes never change
            config = configs.get(stream) or config_for(stream)
            if int(current_context()[1]) == context:
                err = launch_kernel(config, kernel, argv, 0)[0]
            else:   # another context is current (another device's, say): leave it current after
                err = self._launch_in_own_context(launch_kernel, config, argv)
            if err:
                _check((err,))
        return launch

    def _launch_in_own_context(self, launch_kernel, config, argv):
        from cuda.bindings import driver

        _check(driver.cuCtxPushCurrent(driver.CUcontext(self._context)))
        try:
            return launch_kernel(config, self.kernel, argv, 0)[0]
        finally:
            _check(driver.cuCtxPopCurrent())


def with_ahead(p: Plan, kernel, sms: int) -> bytes:
    """p's parameter bytes with Params.ahead set: p.ahead_waves waves of the blocks this GPU
    holds at once, in rows."""
    if not p.ahead_waves:
        return p.template
    resident = kernel.occupancy.max_active_blocks_per_multiprocessor(p.block, p.smem) * sms
    prm = Params.from_buffer_copy(p.template)
    prm.ahead = int(p.ahead_waves * resident * (p.block // p.team))
    return bytes(prm)


def launch_config(grid: int, block: tuple, smem: int, pdl: bool):
    from cuda.bindings import driver

    config = driver.CUlaunchConfig()
    config.gridDimX, config.gridDimY, config.gridDimZ = grid, 1, 1
    config.blockDimX, config.blockDimY, config.blockDimZ = block[0], block[1], 1
    config.sharedMemBytes = smem
    if pdl:
        attr = driver.CUlaunchAttribute()
        attr.id = driver.CUlaunchAttributeID.CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION
        attr.value.programmaticStreamSerializationAllowed = 1
        config.attrs = [attr]
        config.numAttrs = 1
    else:
        config.numAttrs = 0
    return config


_LAUNCHERS: dict = {}


def launcher(device_id: int, p: Plan) -> Launcher:
    """The Launcher of a plan on a device, built and checked once (per PDL setting)."""
    key = (device_id, p, PDL)
    hit = _LAUNCHERS.get(key)
    if hit is None:
        if len(_LAUNCHERS) > 4096:
            _LAUNCHERS.clear()
        hit = _LAUNCHERS[key] = Launcher(device_id, p, PDL)
    return hit


def _torch_stream(device_id: int) -> int:
    import torch

    CURRENT_STREAM["torch"] = getter = torch._C._cuda_getCurrentRawStream   # what torch's codegen uses
    return getter(device_id)


def _cupy_stream(device_id: int) -> int:
    import cupy

    get = cupy.cuda.get_current_stream
    CURRENT_STREAM["cupy"] = getter = lambda _device_id: get().ptr  # noqa: E731
    return getter(device_id)


# framework -> (device id -> the framework's current stream there); imports resolved on first use
CURRENT_STREAM: dict = {"torch": _torch_stream, "cupy": _cupy_stream}


def is_capturing(stream: int) -> bool:
    from cuda.bindings import driver

    status = _check(driver.cuStreamIsCapturing(driver.CUstream(stream)))
    return status != driver.CUstreamCaptureStatus.CU_STREAM_CAPTURE_STATUS_NONE


def resolve_stream(stream, like) -> int:
    """A CUstream handle: stream= as given, else the current stream of `like`'s framework."""
    if stream is None:
        fw = framework_of(like)
        if fw in CURRENT_STREAM:
            return CURRENT_STREAM[fw](like.get_device() if fw == "torch" else -1)
        return 0  # legacy default stream (JAX and others expose no current stream)
    if isinstance(stream, bool):
        raise TypeError(f"stream: expected an int handle or a stream object, got {stream!r}")
    if isinstance(stream, int):
        return stream
    if hasattr(stream, "__cuda_stream__"):
        return int(stream.__cuda_stream__()[1])
    for attr in ("cuda_stream", "ptr", "handle"):  # torch, cupy, cuda.core streams
        if hasattr(stream, attr):
            return int(getattr(stream, attr))
    if hasattr(stream, "stream") and hasattr(stream, "begin_building"):   # cuda.core GraphBuilder
        return resolve_stream(stream.stream, like)
    raise TypeError(f"stream: expected an int handle or a stream object, got {type(stream).__name__}")


def consumer_stream(stream, handle: int, like, obj, capturing: bool) -> int:
    """The consumer stream to hand to obj's exporter (DLPack / CAI).

    On obj's framework's own current stream the order is already right: -1 skips the
    exporter's synchronisation; so it does while `handle` is being captured into a graph,
    where a wait on work outside the capture is not allowed (the caller orders the capture).
    Otherwise the real stream, where 0 (not valid in DLPack) becomes 1, the legacy default
    stream, which is also what JAX needs (it rejects -1).
    """
    same = stream is None and framework_of(obj) == framework_of(like) and framework_of(like) in ("torch", "cupy")
    if same or (capturing and framework_of(obj) != "jax"):
        return -1
    return 1 if handle == 0 else handle

"""Streams, per-device state and the kernel launch itself.

Kernels take one struct by value, which cuda.core's launch() cannot pass; the launch goes
through cuda.bindings' cuLaunchKernelEx with a pointer to the struct's bytes. Loading stays
with cuda.core.
"""
from __future__ import annotations

import ctypes
import functools
from dataclasses import dataclass

from . import _modules
from ._arrays import framework_of
from ._planner import DeviceLimits, Plan, check_fits


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
    return DeviceState(dev, limits, image)


_LAUNCH_CONFIGS: dict = {}


def _launch_config(device_id: int, p: Plan):
    """Kernel handle and launch configuration of a plan on a device, checked once."""
    key = (device_id, p)
    hit = _LAUNCH_CONFIGS.get(key)
    if hit is not None:
        return hit
    from cuda.bindings import driver

    st = device_state(device_id)
    check_fits(p, st.limits, _modules.kernel_meta(_modules.manifest(), st.image, p.kernel))
    kernel = _modules.load_kernel(st.image, p.kernel).handle
    config = driver.CUlaunchConfig()
    config.gridDimX, config.gridDimY, config.gridDimZ = p.grid, 1, 1
    config.blockDimX, config.blockDimY, config.blockDimZ = p.team, p.block // p.team, 1  # x: lane, y: row
    config.sharedMemBytes = p.smem
    config.numAttrs = 0
    if len(_LAUNCH_CONFIGS) > 4096:
        _LAUNCH_CONFIGS.clear()
    _LAUNCH_CONFIGS[key] = hit = (kernel, config)
    return hit


def resolve_stream(stream, like) -> int:
    """A CUstream handle: stream= as given, else the current stream of `like`'s framework."""
    if stream is None:
        fw = framework_of(like)
        if fw == "torch":
            import torch

            return int(torch.cuda.current_stream(like.device).cuda_stream)
        if fw == "cupy":
            import cupy

            return int(cupy.cuda.get_current_stream().ptr)
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
    raise TypeError(f"stream: expected an int handle or a stream object, got {type(stream).__name__}")


def consumer_stream(stream, handle: int, like) -> int:
    """The consumer stream to hand to the exporters (DLPack / CAI).

    On the framework's own current stream the order is already right: -1 skips the exporter's
    stream synchronisation. Otherwise the real stream, where 0 (not valid in DLPack) becomes 1,
    the legacy default stream, which is also what JAX needs (it rejects -1).
    """
    if stream is None and framework_of(like) in ("torch", "cupy"):
        return -1
    return 1 if handle == 0 else handle


def launch(device_id: int, p: Plan, params, stream: int) -> None:
    from cuda.bindings import driver

    kernel, config = _launch_config(device_id, p)
    device_state(device_id).device.set_current()
    config.hStream = driver.CUstream(stream)
    blob = (ctypes.c_char * len(params)).from_buffer(params)   # params: bytes of the Params struct
    argv = (ctypes.c_void_p * 1)(ctypes.addressof(blob))
    _check(driver.cuLaunchKernelEx(config, kernel, ctypes.addressof(argv), 0))

"""Streams, per-device state and the kernel launch itself.

Kernels take one struct by value, which cuda.core's launch() cannot pass; the launch goes
through cuda.bindings' cuLaunchKernelEx with a pointer to the struct's bytes. Loading stays
with cuda.core. Everything a launch needs beyond this call's pointers and stream is built
once per (device, plan) into a Launcher, so a warm call makes exactly two driver calls:
cuCtxGetCurrent and cuLaunchKernelEx.
"""
from __future__ import annotations

import ctypes
import os
import struct
import threading
from dataclasses import dataclass

from . import _modules
from ._arrays import framework_of
from ._errors import driver_module
from ._params import POINTERS, Params
from ._planner import Plan, check_block_fits, check_fits
from ._tuning import DeviceSpec, Tuning, tuning_for

# Programmatic dependent launch on sm_90+: a kernel may start while the previous one in the
# stream finishes; ours waits (griddepcontrol.wait) before its first global access.
# CUDIT_PDL=0 turns it off (the benchmark's A/B switch).
PDL = os.environ.get("CUDIT_PDL", "1") != "0"


def _check(result):
    driver = driver_module()
    err = result[0]
    if err != driver.CUresult.CUDA_SUCCESS:
        _, msg = driver.cuGetErrorString(err)
        raise RuntimeError(f"CUDA error {int(err)}: {msg.decode() if msg else err}")
    return result[1] if len(result) == 2 else result[1:]


def driver_version() -> str:
    v = _check(driver_module().cuDriverGetVersion())
    return f"{v // 1000}.{(v % 1000) // 10}"


@dataclass
class DeviceState:
    device: object           # cuda.core Device
    spec: DeviceSpec
    tuning: Tuning
    image: _modules.Image
    context: int             # the primary context's handle, as an int


def read_spec(dev) -> DeviceSpec:
    """A cuda.core Device's description, as the planner wants it."""
    props = dev.properties
    return DeviceSpec(
        arch=tuple(dev.compute_capability), sms=props.multiprocessor_count, l2_bytes=props.l2_cache_size,
        bandwidth=2.0 * props.memory_clock_rate * 1e3 * props.global_memory_bus_width / 8,
        threads_per_sm=props.max_threads_per_multiprocessor, regs_per_sm=props.max_registers_per_multiprocessor,
        max_threads_per_block=props.max_threads_per_block, max_regs_per_block=props.max_registers_per_block,
        max_smem_per_block=props.max_shared_memory_per_block_optin, name=dev.name)


_STATES: dict = {}


def device_state(device_id: int) -> DeviceState:
    st = _STATES.get(device_id)
    if st is None:
        from cuda.core import Device

        dev = Device(device_id)
        dev.set_current()
        spec = read_spec(dev)
        image = _modules.select_image(spec.arch, _modules.manifest(), driver_version())
        st = _STATES.setdefault(device_id, DeviceState(dev, spec, tuning_for(spec), image, int(dev.context.handle)))
    return st


def set_tuning(tuning: Tuning | None, device_id: int = 0) -> Tuning:
    """Plan this device's launches with another tuning table (None: its own again); returns the
    one in force before. Sweeps and `python -m cudit tune` use it; calls already warm forget theirs."""
    from . import api

    st = device_state(device_id)
    before, st.tuning = st.tuning, tuning or tuning_for(st.spec)
    api.clear_warm()
    return before


_pack_pointers = struct.Struct(f"<{POINTERS}Q").pack_into


class Launcher:
    """One plan on one device: kernel handle, launch configuration, parameter template."""

    def __init__(self, device_id: int, p: Plan, pdl: bool):
        st = device_state(device_id)
        cfg = p.config
        check_fits(p, st.spec, _modules.kernel_meta(_modules.manifest(), st.image, cfg.variant))
        kernel = _modules.load_kernel(st.image, p.kernel)
        self.kernel = kernel.handle
        self.block = (cfg.team, cfg.block // cfg.team)   # x: lane, y: row
        self.grid, self.smem, self.pdl = cfg.grid + cfg.v_blocks, p.smem, pdl and st.spec.arch >= (9, 0)
        self.template = with_ahead(p, kernel, st.spec.sms)
        # Per thread: the parameter bytes (a launch copies them at once) and a launch
        # configuration per stream, so threads never share what a launch reads.
        self._tls = threading.local()
        self._context = st.context
        driver = driver_module()
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
            config.hStream = driver_module().CUstream(stream)
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
        driver = driver_module()
        _check(driver.cuCtxPushCurrent(driver.CUcontext(self._context)))
        try:
            return launch_kernel(config, self.kernel, argv, 0)[0]
        finally:
            _check(driver.cuCtxPopCurrent())


def with_ahead(p: Plan, kernel, sms: int) -> bytes:
    """p's parameter bytes with Params.ahead set: p.ahead_waves waves of the blocks this GPU
    holds at once, in tokens of one side (a block's rows are tokens of one side)."""
    cfg = p.config
    if not cfg.ahead_waves:
        return p.template
    resident = kernel.occupancy.max_active_blocks_per_multiprocessor(cfg.block, p.smem) * sms
    prm = Params.from_buffer_copy(p.template)
    prm.ahead = int(cfg.ahead_waves * cfg.tokens_per_wave(resident))
    return bytes(prm)


def launch_config(grid: int, block: tuple, smem: int, pdl: bool):
    driver = driver_module()
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
    return _cached(_LAUNCHERS, Launcher, device_id, p)


def _cached(cache: dict, make, device_id: int, plan):
    """make(device_id, plan, PDL), built once per key."""
    key = (device_id, plan, PDL)
    hit = cache.get(key)
    if hit is None:
        if len(cache) > 4096:
            cache.clear()
        hit = cache[key] = make(device_id, plan, PDL)
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
    driver = driver_module()
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


class BackwardLauncher:
    """A backward plan on one device: each segment's kernel and grid (as many blocks as the GPU
    holds at once, at most one a row group, shared by its sides' weight streams by rows), then one
    reduction of every weight gradient."""

    def __init__(self, device_id: int, plan, pdl: bool):
        from ._backward import smem_budget
        from ._variants import BACKWARD_REDUCE

        st = device_state(device_id)
        man = _modules.manifest()
        self.steps = []
        for seg in plan.segments:
            kernel = _modules.load_kernel(st.image, seg.variant.name)
            # Full-dim rows sum over their block each row: the fewest rows a block that keep the
            # most threads resident; other rows keep the planner's.
            per = seg.variant.smem_per_thread
            if seg.variant.stages:
                allow_dynamic_smem(kernel, device_id, smem_budget(seg.variant, st.spec))
            block = _fewest_rows_filling(kernel, *seg.block, per) if seg.variant.norm == "full" else seg.block
            threads = block[0] * block[1]
            smem = threads * per
            check_block_fits(seg.variant.name, threads, smem, st.spec, _modules.kernel_meta(man, st.image, seg.variant))
            per_sm = kernel.occupancy.max_active_blocks_per_multiprocessor(threads, smem)
            grids = seg.stream_grids(max(1, per_sm * st.spec.sms))
            self.steps.append((seg, kernel.handle, block, smem, grids))
        self.reduce = _modules.load_kernel(st.image, BACKWARD_REDUCE).handle
        self.pdl = pdl and st.spec.arch >= (9, 0)
        self.workspace_bytes = 4 * plan.workspace_floats([sum(g) for *_, g in self.steps])
        self.context = st.context

    def launch(self, pointers: dict, workspace: int, stream: int) -> None:
        """pointers: role -> address (the plan's roles, and each wanted weight gradient's)."""
        from ._backward import REDUCE_LANES, reduce_launch
        from ._params import BwdParams

        driver = driver_module()
        pushed = int(_check(driver.cuCtxGetCurrent())) != self.context
        if pushed:
            _check(driver.cuCtxPushCurrent(driver.CUcontext(self.context)))
        try:
            wanted, offset = [], workspace
            for seg, kernel, block, smem, grids in self.steps:
                if sum(grids):
                    prm = BwdParams.from_buffer_copy(seg.template)
                    for i, slot in enumerate(seg.slots):
                        if slot is not None:
                            base = offset if slot[0] == "workspace" else pointers[slot[0]]
                            struct.pack_into("<Q", prm, 8 * i, base + slot[1])
                    prm.side_blocks, splits = seg.side_splits(grids)
                    prm.split[:len(splits)] = splits
                    _launch_struct(launch_config(sum(grids), block, smem, self.pdl), kernel, bytes(prm), stream)
                # a stream's partial sums follow the blocks of the streams before it; a stream with no
                # rows (every token text, say) sums no slots: zeros
                firsts = [sum(grids[:i]) for i in range(len(grids))]
                wanted += [(offset + 4 * first * seg.width, pointers[grad], grid, seg.width, seg.grad_dtype)
                           for grad, grid, first in zip(seg.grads, grids, firsts) if grad]
                if any(seg.grads):
                    offset += 4 * sum(grids) * seg.width
            if wanted:   # one launch for every gradient: the sides' launches run back to back
                blocks, blob = reduce_launch(wanted)
                _launch_struct(launch_config(blocks, (REDUCE_LANES, 32), 0, self.pdl), self.reduce, blob, stream)
        finally:
            if pushed:
                _check(driver.cuCtxPopCurrent())


def _fewest_rows_filling(kernel, team: int, most: int, smem_per_thread: int) -> tuple:
    """(team, rows): the fewest rows a block, of whole warps (the warp-wide sums), that keep the
    most threads resident by the kernel's occupancy (its registers, its shared memory)."""
    best = (0, most)
    for rows in range(1, most + 1):
        threads = team * rows
        if threads % 32 == 0:
            resident = kernel.occupancy.max_active_blocks_per_multiprocessor(threads, threads * smem_per_thread) * threads
            if resident > best[0]:
                best = (resident, rows)
    return team, best[1]


def allow_dynamic_smem(kernel, device_id: int, nbytes: int) -> None:
    """Let a kernel's blocks take nbytes of dynamic shared memory on a device (past 48 KB needs it)."""
    driver = driver_module()
    attr = driver.CUfunction_attribute.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
    _check((driver.cuKernelSetAttribute(attr, nbytes, driver.CUkernel(int(kernel.handle)), driver.CUdevice(device_id))[0],))


def _launch_struct(config, kernel, params: bytes, stream: int) -> None:
    """Launch with one struct argument, on a stream given as a handle."""
    blob = ctypes.create_string_buffer(params, len(params))
    argv = (ctypes.c_void_p * 1)(ctypes.addressof(blob))
    config.hStream = driver_module().CUstream(stream)   # a config of this launch's own
    _check((driver_module().cuLaunchKernelEx(config, kernel, ctypes.addressof(argv), 0)[0],))


_BACKWARD: dict = {}


def backward_launcher(device_id: int, plan) -> BackwardLauncher:
    """The BackwardLauncher of a backward plan on a device, built and checked once."""
    return _cached(_BACKWARD, BackwardLauncher, device_id, plan)

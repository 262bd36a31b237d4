"""Array views: any DLPack / CUDA-Array-Interface object -> ArrayInfo (pointer, shape, strides).

The planner sees only ArrayInfo, so it can be tested on the CPU with made-up arrays.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ._errors import PlanError, driver_module

# numpy dtype name -> cudit's short name (ml_dtypes names bfloat16 "bfloat16").
_DTYPE_NAMES = {"float32": "f32", "float16": "f16", "bfloat16": "bf16"}
ITEMSIZE = {"f32": 4, "f16": 2, "bf16": 2, "int32": 4, "int64": 8, "uint8": 1, "float8_e4m3fn": 1, "float8_e5m2": 1}


class ArrayInfo(NamedTuple):
    """What the planner needs to know of one array. Strides are in elements."""

    ptr: int
    shape: tuple
    strides: tuple
    dtype: str          # "f32" / "f16" / "bf16", or the numpy name of anything else
    device_id: int      # -1: host memory
    readonly: bool = False
    framework: str = ""  # "torch", "cupy", "jax", ... (the exporting object's top module)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def itemsize(self) -> int:
        return ITEMSIZE.get(self.dtype, 0)


def contiguous_strides(shape) -> tuple:
    strides, acc = [], 1
    for n in reversed(shape):
        strides.append(acc)
        acc *= max(int(n), 1)
    return tuple(reversed(strides))


def framework_of(obj) -> str:
    top = type(obj).__module__.split(".", 1)[0]
    return "jax" if top == "jaxlib" else top


_DTYPE_CACHE: dict = {}


def dtype_name(dtype) -> str:
    try:
        return _DTYPE_CACHE[dtype]
    except (KeyError, TypeError):
        pass
    try:
        name = np.dtype(dtype).name if dtype is not None else "unknown"
    except TypeError:   # a framework's own dtype object, e.g. torch.bfloat16
        name = str(dtype).rsplit(".", 1)[-1]
    short = _DTYPE_NAMES.get(name, name)
    try:
        _DTYPE_CACHE[dtype] = short
    except TypeError:  # an unhashable dtype-like: just don't cache
        pass
    return short


_DLPACK_CPU = 1
_SMV = None  # cuda.core's StridedMemoryView, imported on first use


def on_host(obj) -> bool:
    """True for an array in host memory (numpy, a CPU tensor): no GPU is needed to reject it."""
    is_cuda = getattr(obj, "is_cuda", None)   # torch: a cheap attribute, no DLPack call
    if isinstance(is_cuda, bool):
        return not is_cuda
    dev = getattr(obj, "__dlpack_device__", None)
    if dev is None:
        return False
    try:
        return int(dev()[0]) == _DLPACK_CPU
    except Exception:  # an exporter that cannot say: let the view decide
        return False


def is_array(obj) -> bool:
    return any(hasattr(obj, a) for a in ("__dlpack__", "__cuda_array_interface__", "__array_interface__"))


def check_no_autograd(role: str, obj) -> None:
    """Only cudit.torch's functional operators record a gradient: a tensor autograd would track
    must not pass silently through any other entry point."""
    if getattr(obj, "requires_grad", False) is True and _grad_enabled():
        raise PlanError(
            f"{role}: expected a tensor autograd does not track, got one with requires_grad=True while grad "
            f"mode is on; this call records no gradient (in place, or outside torch's operators), so the "
            f"backward pass would be wrong. For training call cudit.torch.qk_norm_rope(..., inplace=False); "
            f"else call it under torch.no_grad() / torch.inference_mode(), or pass {role}.detach()")


def _grad_enabled() -> bool:
    import torch   # only torch tensors carry requires_grad

    return torch.is_grad_enabled()


def _host_info(obj) -> ArrayInfo:
    """A host array's description without cuda.core (it is rejected by name; no driver needed)."""
    shape = tuple(int(n) for n in obj.shape)
    dt = dtype_name(getattr(obj, "dtype", None))
    stride = getattr(obj, "stride", None)
    if callable(stride):     # torch
        strides = tuple(int(s) for s in stride())
    else:                    # numpy and its likes: byte strides
        item = max(1, int(getattr(obj, "itemsize", 1)))
        strides = tuple(int(s) // item for s in getattr(obj, "strides", None) or contiguous_strides(shape))
    return ArrayInfo(ptr=0, shape=shape, strides=strides, dtype=dt, device_id=-1, framework=framework_of(obj))


FP8_NAMES = ("float8_e4m3fn", "float8_e5m2")


def _fp8_name(obj) -> str | None:
    """The fp8 dtype name of a torch tensor, else None."""
    if framework_of(obj) != "torch":
        return None
    name = dtype_name(getattr(obj, "dtype", None))
    return name if name in FP8_NAMES else None


def _byte_view(obj):
    import torch

    return obj.view(torch.uint8)


def _not_an_array(role: str, obj, why: str = "") -> PlanError:
    return PlanError(f"{role}: expected a GPU array that speaks DLPack or __cuda_array_interface__, "
                     f"got {type(obj).__name__}{why}")


def describe(obj, stream_ptr: int, role: str = "array") -> ArrayInfo:
    """View obj through cuda.core (DLPack first, then the CUDA Array Interface).

    stream_ptr is the stream the kernel will run on: the producer orders its work before it.
    Host arrays are described without cuda.core, so that they fail by name with no driver.
    """
    global _SMV
    check_no_autograd(role, obj)
    if on_host(obj):
        try:
            return _host_info(obj)
        except (AttributeError, TypeError, ValueError):
            pass   # an unusual host object: the view below names it
    if not is_array(obj):
        raise _not_an_array(role, obj)
    if getattr(obj, "requires_grad", False) is True:
        obj = obj.detach()   # grad mode is off (checked above): torch exports no tracked tensor
    if _SMV is None:
        driver_module()      # cuda.core needs cuda-bindings: name the extra if it is missing
        from cuda.core.utils import StridedMemoryView as _SMV
    narrow = _fp8_name(obj)
    if narrow:   # exporters' fp8 codes are newer than some DLPack readers: viewed as bytes
        obj = _byte_view(obj)
    try:
        view = _SMV.from_any_interface(obj, stream_ptr=stream_ptr)
    except (BufferError, TypeError, AttributeError) as exc:
        raise _not_an_array(role, obj, f" ({exc})") from None
    shape = tuple(int(n) for n in view.shape)
    strides = view.strides
    strides = contiguous_strides(shape) if strides is None else tuple(int(s) for s in strides)
    try:
        dt = narrow or dtype_name(view.dtype)
    except NotImplementedError:  # a narrow dtype without ml_dtypes
        dt = "unknown"
    device = int(view.device_id) if view.is_device_accessible else -1
    readonly, framework = bool(view.readonly), framework_of(obj)
    writeable = getattr(obj, "writeable", None)
    if isinstance(writeable, bool):
        # A jax.experimental.buffer_callback Buffer: unlike a JAX array, XLA hands out its
        # output buffers to be written in place, and says which ones.
        readonly, framework = not writeable, "jax-buffer"
    return ArrayInfo(
        ptr=int(view.ptr), shape=shape, strides=strides, dtype=dt, device_id=device,
        readonly=readonly, framework=framework,
    )


# ------------------------------------------------------------------ the warm-call fast path
#
# A warm call must not pay for an exporter round trip per array (DLPack capsule, view,
# stream handshake: ~2-3 us each). For the frameworks whose current stream cudit launches on
# by default, the same facts are read straight from the array object: a key that pins
# everything a plan depends on (shape, strides, dtype, device, pointer alignment), plus the
# pointer. Anything else, or anything unusual (CPU arrays, tensor subclasses), takes the
# DLPack path, which gives the precise error.


def _torch_keys(objs):
    # Inlined for torch, the common case: a call reads five tensors and this loop is most
    # of cudit's own share of a warm call.
    keys, ptrs = [], []
    for t in objs:
        if t is None:
            keys.append(None)
            ptrs.append(0)
        elif type(t) in _TORCH_TYPES and not (t.requires_grad and _torch_grad_enabled()):
            p = t.data_ptr()   # (a tensor autograd would track takes the full path, which names it)
            ptrs.append(p)
            keys.append((t.shape, t.stride(), t.dtype, t.get_device(), p & 15))
        else:
            return None
    return keys, ptrs


def per_object(key_of, cls):
    """A keys function from a one-array key function (pointer, key) for arrays of type cls."""
    def keys_of(objs):
        keys, ptrs = [], []
        for a in objs:
            if a is None:
                keys.append(None)
                ptrs.append(0)
            elif type(a) is cls:
                p, key = key_of(a)
                ptrs.append(p)
                keys.append(key)
            else:
                return None
        return keys, ptrs
    return keys_of


def _cupy_key(a):
    p = a.data.ptr
    return p, (a.shape, a.strides, a.dtype, a.device.id, p & 15)


_TORCH_TYPES: set = set()
_torch_grad_enabled = None   # torch.is_grad_enabled, bound with the torch adapter


def _adapter_for(cls):
    top = cls.__module__.split(".", 1)[0]
    if top == "torch":
        import torch

        if cls in (torch.Tensor, torch.nn.Parameter):   # subclasses may redirect data_ptr
            global _torch_grad_enabled
            _torch_grad_enabled = torch.is_grad_enabled
            _TORCH_TYPES.update((torch.Tensor, torch.nn.Parameter))
            return "torch", _torch_keys
    elif top == "cupy":
        import cupy

        if cls is cupy.ndarray:
            return "cupy", per_object(_cupy_key, cls)
    return None, None


_ADAPTERS: dict = {}


def adapter(cls) -> tuple:
    """(framework, keys function) for calls whose first array is of type cls; (None, None)
    for describe() only.

    A keys function takes a call's arrays (None where absent) and returns (keys, pointers),
    one of each per array, every key (shape, strides, dtype, device, pointer % 16) pinning
    what a plan depends on; or None when an array is of another type. It may raise
    RuntimeError or AttributeError (e.g. a sparse tensor has no strides): then describe() it is.
    """
    hit = _ADAPTERS.get(cls)
    if hit is None:
        hit = _ADAPTERS[cls] = _adapter_for(cls)
    return hit

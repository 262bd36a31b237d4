"""Made-up array descriptions for CPU tests of the planner."""
from cudit._arrays import ArrayInfo, contiguous_strides

BASE = 0x7F0000000000


def arr(shape, dtype="bf16", strides=None, ptr=BASE, device=0, readonly=False, framework="torch"):
    shape = tuple(shape)
    return ArrayInfo(ptr=ptr, shape=shape, strides=tuple(strides) if strides else contiguous_strides(shape),
                     dtype=dtype, device_id=device, readonly=readonly, framework=framework)

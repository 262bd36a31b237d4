"""python -m cudit: on a GPU, show the device and cubin, self-check, time two shapes.

    python -m cudit bench     the full benchmark (docs/benchmark.md)
    python -m cudit launch    host overhead, launch-bound shapes, PDL chain (docs/interop.md)

Without a GPU it says so in one line, lists the shipped cubins and exits 1.
"""
from __future__ import annotations

import sys


def _gpu_or_reason():
    try:
        from cuda.bindings import driver

        (err,) = driver.cuInit(0)
        if err != driver.CUresult.CUDA_SUCCESS:
            return f"no usable CUDA driver ({err.name})"
        err, n = driver.cuDeviceGetCount()
        return None if err == driver.CUresult.CUDA_SUCCESS and n > 0 else "no GPU attached"
    except Exception as exc:
        return f"no CUDA driver ({exc.__class__.__name__}: {exc})"


def main(argv=None) -> int:
    import cudit

    argv = sys.argv[1:] if argv is None else argv
    reason = _gpu_or_reason()
    if reason:
        print(f"cudit: no GPU here ({reason}); shipped: " +
              ", ".join(f"{a} ({f})" for a, f in cudit.cubins().items()))
        return 1
    from . import _selfcheck

    if argv[:1] == ["bench"]:
        from . import bench

        return bench.main(argv[1:])
    if argv[:1] == ["launch"]:
        from . import launchbench

        return launchbench.main(argv[1:])
    return _selfcheck.main()


if __name__ == "__main__":
    sys.exit(main())

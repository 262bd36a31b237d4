"""cudit's exceptions, and the checks that tell a missing package, driver or GPU apart."""
from __future__ import annotations


class PlanError(ValueError):
    """Bad input, found before any launch; nothing was written. The message names the argument."""


class NoImageError(RuntimeError):
    """The GPU can run none of the shipped code."""


class CudaUnavailableError(RuntimeError):
    """cuda-bindings, the NVIDIA driver or a GPU is missing; the message says which and what to do."""


BINDINGS_MISSING = ("cuda-bindings is not installed: pip install 'cudit[cu12]' for a CUDA 12 driver or "
                    "'cudit[cu13]' for a CUDA 13 driver (nvidia-smi prints the driver's CUDA version)")


def driver_module():
    """cuda.bindings.driver, or CudaUnavailableError naming the extra to install."""
    try:
        from cuda.bindings import driver
    except ImportError:
        raise CudaUnavailableError(BINDINGS_MISSING) from None
    return driver


def cuda_problem() -> str | None:
    """None when a GPU is usable; else one actionable sentence: no cuda-bindings, no driver, no GPU."""
    try:
        driver = driver_module()
    except CudaUnavailableError as exc:
        return str(exc)
    try:
        (err,) = driver.cuInit(0)
    except Exception as exc:   # the driver library itself could not be loaded
        return (f"no NVIDIA driver: libcuda could not be loaded ({exc.__class__.__name__}); "
                "install the NVIDIA driver on a machine with an NVIDIA GPU")
    if err == driver.CUresult.CUDA_ERROR_NO_DEVICE:
        return "no GPU: the NVIDIA driver is installed but sees no CUDA device"
    if err != driver.CUresult.CUDA_SUCCESS:
        return f"the NVIDIA driver did not start (cuInit: {err.name}); check nvidia-smi"
    err, n = driver.cuDeviceGetCount()
    if err != driver.CUresult.CUDA_SUCCESS or n == 0:
        return "no GPU: the NVIDIA driver is installed but sees no CUDA device"
    return None

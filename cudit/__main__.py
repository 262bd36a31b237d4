"""python -m cudit: the self-check on a GPU, and the tools around it (see --help)."""
from __future__ import annotations

import argparse
import sys

COMMANDS = {
    "check": "show the GPU and the cubin it loads, check two model shapes against the float64 "
             "reference and time them (the default)",
    "info": "list the shipped cubins and say whether a GPU is usable here (needs no GPU)",
    "tune": "measure a tuning table for this GPU and save it where cudit finds it (needs torch; "
            "--out PATH to write elsewhere)",
}


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m cudit", description="cudit: fused QK RMSNorm + RoPE kernels for diffusion transformers.",
        epilog="Without a GPU, check and tune say why in one line and exit 1. The benchmarks live in the "
               "repository's benchmarks/ folder (docs/dev/benchmark.md).")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")
    for name, text in COMMANDS.items():
        cmd = sub.add_parser(name, help=text, description=text)
        if name == "tune":
            cmd.add_argument("--out", default=None, help="the table's path (default: the user's table folder)")
    return ap


def info() -> str:
    import cudit
    from ._errors import cuda_problem

    try:
        shipped = ", ".join(f"{a} ({f})" for a, f in cudit.cubins().items())
    except cudit.NoImageError as exc:
        shipped = str(exc)
    problem = cuda_problem()
    lines = [f"cudit {cudit.__version__}; shipped: {shipped}", f"GPU: {problem or 'usable'}"]
    if not problem:
        from . import _launch

        st = _launch.device_state(0)
        lines.append(f"device 0: {st.spec.name}, sm_{st.spec.arch[0]}{st.spec.arch[1]}, {st.spec.sms} SMs; "
                     f"tuning: {st.tuning.name}")
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser().parse_args(argv)
    command = args.command or "check"
    if command == "info":
        print(info())
        return 0
    from ._errors import cuda_problem

    problem = cuda_problem()
    if problem:
        print(f"cudit: cannot run '{command}' here: {problem}")
        return 1
    if command == "tune":
        from . import _tune

        return _tune.main(["--out", args.out] if args.out else [])
    from . import _selfcheck

    return _selfcheck.main()


if __name__ == "__main__":
    sys.exit(main())

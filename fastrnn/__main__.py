"""Run a Keras script with fastrnn's layers in place of Keras' own, unedited.

    python -m fastrnn [--report] [--cells gru,lstm] script.py [args...]
    python -m fastrnn [--report] [--cells ...] -m package.module [args...]

The script runs as `python script.py args...` would run it (sys.argv, __name__
== "__main__", its folder first on sys.path, its exit code), with
`fastrnn.patch()` applied first, so keras.layers.SimpleRNN/GRU/LSTM (and
tf.keras's, and model files naming them) give fastrnn's layers. --report prints
at exit, on stderr, which layers ran on which route.
"""

import atexit
import os
import runpy
import sys
import traceback

USAGE = """\
usage: python -m fastrnn [--report] [--cells CELLS] script.py [args...]
       python -m fastrnn [--report] [--cells CELLS] -m module [args...]

Runs a Keras script with fastrnn.patch() on: keras.layers.SimpleRNN, GRU, LSTM
and RNN (also tf.keras.layers.*, and model files naming them) give fastrnn's
layers; an RNN runs the kernels for stock cells, Keras' loop for custom ones.

options:
  --report       at exit, print on stderr which layers ran on which route
                 (native op, numpy_function fallback, cuda, or Keras' own loop: why)
  --cells CELLS  patch only these, comma-separated: simple_rnn,gru,lstm,rnn (default: all)
  -m module      run a module as `python -m module` does
  -h, --help     show this help
"""


def _usage_error(message):
    sys.stderr.write(f"{USAGE}\npython -m fastrnn: error: {message}\n")
    return 2


def _parse(argv):
    """(report, cells, module or None, script or None, rest of argv) or an exit code."""
    report, cells = False, None
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in ("-h", "--help"):
            sys.stdout.write(USAGE)
            return 0
        if arg == "--report":
            report = True
        elif arg == "--cells" or arg.startswith("--cells="):
            if arg == "--cells":
                i += 1
                if i == len(argv):
                    return _usage_error("--cells needs a value, e.g. --cells gru,lstm")
                value = argv[i]
            else:
                value = arg.split("=", 1)[1]
            cells = [c.strip() for c in value.split(",") if c.strip()]
        elif arg == "-m":
            if i + 1 == len(argv):
                return _usage_error("-m needs a module name")
            return report, cells, argv[i + 1], None, argv[i + 2:]
        elif arg.startswith("-m") and len(arg) > 2:
            return report, cells, arg[2:], None, argv[i + 1:]
        elif arg == "--":
            if i + 1 == len(argv):
                return _usage_error("no script given")
            return report, cells, None, argv[i + 1], argv[i + 2:]
        elif arg.startswith("-"):
            return _usage_error(f"unknown option {arg!r}")
        else:
            return report, cells, None, arg, argv[i + 1:]
        i += 1
    return _usage_error("no script given")


def _print_exception(exc):
    """Python's own traceback for an uncaught exception, without this runner's frames."""
    tb = exc.__traceback__
    while tb is not None and (tb.tb_frame.f_code.co_filename == __file__
                              or tb.tb_frame.f_globals.get("__name__") == "runpy"):
        tb = tb.tb_next
    traceback.print_exception(type(exc), exc, tb)


def _print_report():
    from fastrnn import _routes

    sys.stderr.flush()
    sys.stdout.flush()
    sys.stderr.write(_routes.report() + "\n")
    sys.stderr.flush()


def main(argv=None):
    parsed = _parse(sys.argv[1:] if argv is None else argv)
    if isinstance(parsed, int):
        return parsed
    report, cells, module, script, rest = parsed

    from fastrnn import _patch

    try:
        _patch.check_cells(cells, "patch")
    except ValueError as e:
        return _usage_error(f"--cells: {e}")
    if script is not None and not os.path.exists(script):
        sys.stderr.write(f"python -m fastrnn: can't open file {os.path.abspath(script)!r}: "
                         "No such file or directory\n")
        return 2
    _patch.patch(cells=cells)
    if report:
        # At exit, after the script's threads (and its own atexit handlers) finish.
        atexit.register(_print_report)

    if script is not None:
        sys.argv = [script, *rest]
        # As `python script.py`: the script's folder, not the current one, comes first.
        sys.path[0] = os.path.dirname(os.path.abspath(script))
        run = lambda: runpy.run_path(script, run_name="__main__")  # noqa: E731
    else:
        sys.argv = [module, *rest]  # run_module puts the module's file in argv[0]
        sys.path[0] = os.getcwd()
        run = lambda: runpy.run_module(module, run_name="__main__", alter_sys=True)  # noqa: E731
    try:
        run()
    except SystemExit:
        raise
    except Exception as exc:  # the script's own error: shown as Python shows it, exit 1
        _print_exception(exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

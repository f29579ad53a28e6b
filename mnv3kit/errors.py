"""The one exception type the CLIs turn into a one-line message and a non-zero exit."""

import importlib.util
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Optional


class KitError(Exception):
    """A problem the user can fix; the message says what is wrong and how to fix it."""

    exit_code = 2


HOW_TO_INSTALL = "install the kit's environment: `make venv`, or `pip install \".[all]\" -c constraints.txt`"


def prog_name(module: Optional[str] = None) -> str:
    """The command as the user typed it (`serve.py`, `mnv3-serve`, or `python -m MODULE` when run that way)."""
    name = Path(sys.argv[0]).name
    if module and name == module.rsplit(".", 1)[-1] + ".py":
        return f"python -m {module}"
    return name


@contextmanager
def cli_errors(prog: Optional[str] = None):
    """Turn KitError, a missing third-party package and Ctrl-C into `prog: error: ...` on stderr and an exit code,
    never a traceback."""
    prog = prog or prog_name()
    try:
        yield
    except KitError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except ModuleNotFoundError as exc:
        package = (exc.name or "").split(".")[0]
        # a package that is there but broken (a submodule missing, the kit's own code) keeps its traceback
        if not package or package == "mnv3kit" or importlib.util.find_spec(package) is not None:
            raise
        print(f"{prog}: error: this step needs the Python package {package!r}, which is not installed here: "
              f"{HOW_TO_INSTALL}", file=sys.stderr)
        sys.exit(KitError.exit_code)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        sys.exit(130)

"""The flags every CLI shares, defined once: output directory, repository, model selection, server URL and protocol,
the ports of an embedded Triton a command starts.

README's "Flags every command shares" table documents them; tests/test_cli.py checks each CLI's --help against it.
"""

import argparse
import sys
from pathlib import Path
from typing import List, Optional, Tuple

from ..perf import concurrency_range
from ..spec import DEFAULT_URLS, ENSEMBLE, LOCAL_OPTIONAL, MODELS, PREPROCESS, PROTOCOLS

DEFAULT_REPO = Path("model_repository_local")  # what serve.py serves and the local tools read
# Short keys accepted wherever a Triton model name is (`--models pt,onnx` = mobilenetv3_pt,mobilenetv3_onnx).
MODEL_KEYS = {**{m.key: m.name for m in (*MODELS, *LOCAL_OPTIONAL)}, "image": ENSEMBLE, "preprocess": PREPROCESS}


class _Deprecated(argparse.Action):
    """An old flag name, still accepted for one release: stores into the new flag's dest and says so on stderr."""

    def __init__(self, option_strings, dest, new: str = "", **kwargs):
        self.new = new
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"{parser.prog}: warning: {option_string} is deprecated and will be removed in the next release; "
              f"use {self.new}", file=sys.stderr)
        setattr(namespace, self.dest, True if self.nargs == 0 else values)


def deprecated(parser, old: str, new: str, **kwargs) -> None:
    """Accept `old` as a hidden alias of the already added flag `new` (same dest, type and choices)."""
    action = next(a for a in parser._actions if new in a.option_strings)
    parser.add_argument(old, dest=action.dest, action=_Deprecated, new=new, help=argparse.SUPPRESS,
                        type=action.type, choices=action.choices, metavar=action.metavar,
                        nargs=0 if action.nargs == 0 else None, **kwargs)


def model_names(text: str) -> List[str]:
    """`pt,onnx` or `mobilenetv3_pt,mobilenetv3_onnx` (or a mix) -> Triton model names, order kept."""
    names = [MODEL_KEYS.get(x.strip(), x.strip()) for x in text.split(",") if x.strip()]
    if not names:
        raise argparse.ArgumentTypeError("expected a comma-separated list of models, e.g. pt,onnx")
    return list(dict.fromkeys(names))


def model_keys(text: str) -> Tuple[str, ...]:
    """The same list as spec keys (pt, onnx, trt, u8): what a build selects."""
    by_name = {name: key for key, name in MODEL_KEYS.items()}
    return tuple(by_name.get(name, name) for name in model_names(text))


def model_name(text: str) -> str:
    """One model: a key (pt) or a Triton model name (mobilenetv3_pt)."""
    return MODEL_KEYS.get(text.strip(), text.strip())


def add_model(parser, default: str) -> None:
    """-m/--model: one served model, by key (pt, onnx, ...) or Triton name."""
    parser.add_argument("-m", "--model", type=model_name, default=default, metavar="NAME",
                        help=f"model to load, by key or name (default {default})")


def add_output(parser, default: Optional[Path] = None, help: str = "", required: bool = False,
               metavar: str = "DIR") -> None:
    if default is not None:
        help = f"{help} (default: {default})"
    parser.add_argument("-o", "--output", type=Path, default=default, required=required, metavar=metavar, help=help)
    deprecated(parser, "--out", "--output")


def add_repo(parser, default: Optional[Path] = DEFAULT_REPO, help: str = "", required: bool = False) -> None:
    if default is not None and not required:
        help = f"{help} (default: {default})" if help else f"model repository (default: {default})"
    parser.add_argument("--repo", type=Path, default=None if required else default, required=required,
                        metavar="DIR", help=help or "model repository")


def add_cpu_sets(parser) -> None:
    """--server-cpus and --client-cpus: keep a benchmark's server and its load generator on different cores."""
    from ..process import cpu_list

    parser.add_argument("--server-cpus", type=cpu_list, metavar="LIST",
                        help="CPUs for tritonserver and its stubs, taskset's form (0,1 or 0-3; default: all)")
    parser.add_argument("--client-cpus", type=cpu_list, metavar="LIST",
                        help="CPUs for this client once the server runs (default: all, or the rest with "
                             "--server-cpus)")


PORT_FLAGS = (("http", "HTTP"), ("grpc", "gRPC"), ("metrics", "metrics"))  # Ports' fields, as Triton names them


def port_number(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise argparse.ArgumentTypeError(f"expected a port number 1-65535, got {text!r}")
    return int(text)


def add_ports(parser, free: bool = False) -> None:
    """--http-port, --grpc-port, --metrics-port: where the embedded Triton that the command starts listens.
    Defaults: Triton's own ports, or with ``free`` a free port for each one not given (ports_of)."""
    from ..server import Ports

    for name, label in PORT_FLAGS:
        default = None if free else getattr(Ports(), name)
        parser.add_argument(f"--{name}-port", type=port_number, default=default, metavar="PORT",
                            help=f"the embedded Triton's {label} port "
                                 f"({f'default {default}' if default else 'default: a free port'})")


def ports_of(args: argparse.Namespace):
    """The server.Ports of add_ports' flags, a free port for each one left unset."""
    from ..server import Ports, free_ports

    given = [getattr(args, f"{name}_port") for name, _ in PORT_FLAGS]
    spare = iter(port for port in free_ports(2 * len(given)) if port not in given)
    return Ports(*(port or next(spare) for port in given))


def add_server(parser, protocol: str = "http") -> None:
    parser.add_argument("-u", "--url", metavar="HOST:PORT",
                        help=f"server address (default {DEFAULT_URLS['http']} for http, "
                             f"{DEFAULT_URLS['grpc']} for grpc)")
    parser.add_argument("-i", "--protocol", choices=PROTOCOLS, default=protocol, help=f"default {protocol}")


def positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return int(text)


def count_or_zero(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text!r}")
    return int(text)


def concurrency_text(text: str) -> str:
    concurrency_range(text)
    return text


def existing_dir(text: str) -> str:
    if not Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"{text}: no such directory")
    return text

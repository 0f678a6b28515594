"""The `epochwal` command of the Python package: the same program as the
`epochwal` binary built with cargo (`run` and every operator tool, with the
same options and exit codes), compiled into the package::

    $ epochwal tail -f runs/exp1
    $ python -m epochwal verify runs/exp1

`pip install ./python` puts the `epochwal` command on the environment's PATH.
"""

from __future__ import annotations

import signal
import sys
from typing import List, Optional


def main(argv: Optional[List[str]] = None) -> None:
    """Runs the command line on `argv` (default: `sys.argv[1:]`) and exits
    with its code::

        main(["inspect", "runs/exp1"])
    """
    # The program runs in Rust with the GIL released: Python's own SIGINT
    # handler would only set a flag that nothing reads. Give SIGINT back its
    # default action, as in the binary (commands that handle it, such as
    # `tail -f` and `run`, install their own handlers).
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    from . import _native

    args = sys.argv[1:] if argv is None else argv
    sys.exit(_native.cli(["epochwal", *args]))


if __name__ == "__main__":
    main()

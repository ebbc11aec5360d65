"""``python -m pydistill``: the command line (see :mod:`pydistill.cli`)."""

import sys

from pydistill.cli import main

if __name__ == "__main__":
    sys.exit(main())

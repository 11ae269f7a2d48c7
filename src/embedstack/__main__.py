"""`python -m embedstack ...`: the same command line as `embedstack ...`."""

from __future__ import annotations

import sys

from embedstack.cli import main

if __name__ == "__main__":
    sys.exit(main())

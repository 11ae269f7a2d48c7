"""`python -m embedstack.cli`."""

import sys

from embedstack.cli import main

if __name__ == "__main__":
    sys.exit(main())

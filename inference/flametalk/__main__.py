"""`python -m flametalk ...`: see flametalk.commands.main."""

import sys

from .commands.main import main

if __name__ == "__main__":
    sys.exit(main())

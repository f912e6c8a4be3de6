"""``python -m approxjax``: the command line."""

import sys

from approxjax._src.runner.cli import main

if __name__ == "__main__":
    sys.exit(main())

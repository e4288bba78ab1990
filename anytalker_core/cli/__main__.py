"""``python -m anytalker_core.cli``: the same as the ``anytalker`` command."""

import sys

from . import main

if __name__ == "__main__":
    sys.exit(main())

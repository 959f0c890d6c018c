"""``python -m llavarad.cli``: the same CLI as ``python -m llavarad`` (kept for launch lines written that way)."""

import sys

from llavarad.cli import main

sys.exit(main())

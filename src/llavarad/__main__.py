"""``python -m llavarad``: the CLI, so launchers can start it as a module
(``torchrun --nproc_per_node 4 -m llavarad generate ...``, ``accelerate launch -m llavarad ...``)."""

import sys

from llavarad.cli import main

sys.exit(main())

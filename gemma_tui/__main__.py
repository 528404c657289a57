"""`python -m gemma_tui` is the same as the `gemma-tui` command."""

import sys

from gemma_tui.cli import main

sys.exit(main())

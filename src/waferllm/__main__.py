"""`python -m waferllm` runs the CLI."""

import sys

from waferllm.cli import main

sys.exit(main())

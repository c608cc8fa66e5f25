"""``python -m fibrosis.cli`` (what torchrun runs)."""
import sys

from fibrosis.cli.main import main

sys.exit(main())

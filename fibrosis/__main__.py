"""``python -m fibrosis``: the `fibrosis` command."""
import sys

from fibrosis.cli.main import main

sys.exit(main())

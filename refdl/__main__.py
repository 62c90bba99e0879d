"""``python -m refdl ...`` is the ``refdl`` command."""
import sys

from .cli import main

sys.exit(main())

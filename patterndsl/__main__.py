"""``python -m patterndsl``: the psparse command."""
import sys

from .cli import main

sys.exit(main())

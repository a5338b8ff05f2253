"""``python -m smolsft.hardware``: see smolsft/hardware/cli.py."""
import sys

from smolsft.hardware.cli import main

sys.exit(main())

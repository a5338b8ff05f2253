"""``python -m smolsft.launch``: see smolsft/launch/cli.py."""
import sys

from smolsft.launch.cli import main

sys.exit(main())

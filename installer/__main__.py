"""`python3 -m k3bundle.installer` runs the installer's command line."""

import sys

from k3bundle.installer.cli import main

sys.exit(main(prog="python3 -m k3bundle.installer"))

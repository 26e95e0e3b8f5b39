"""`python3 -m k3bundle.installer` runs the installer's command line."""

import sys

from k3bundle.installer import readahead

readahead.start(sys.argv[1:])  # the stick reads while the installer is imported
from k3bundle.installer.cli import main  # noqa: E402

sys.exit(main(prog="python3 -m k3bundle.installer"))

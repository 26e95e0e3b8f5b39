"""`python3 -m k3bundle.bundler` runs the k3bundle command line."""

from .entry import main

main()

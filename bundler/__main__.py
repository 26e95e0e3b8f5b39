"""`python3 -m k3bundle.bundler` runs the k3bundle command line."""

from k3bundle.bundler.entry import main

main()

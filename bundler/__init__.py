"""k3bundle connected side: resolve, fetch, write and sign bundles."""

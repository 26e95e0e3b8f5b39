"""k3bundle disconnected side: read and verify bundles, place files. Standard library only."""

"""HTTP for everything the builder fetches: one bounded, retrying, resuming transport."""

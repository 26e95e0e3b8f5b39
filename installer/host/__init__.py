"""The host side of installing: plan, stage, commit and record what lands under --root."""

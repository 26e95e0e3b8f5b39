"""Example bundle specs and their JSON schema, shipped as package data."""

"""Fixtures shared by every test folder: the real OCI registries and the standard test images."""

from tests.oci_registry import (  # noqa: F401 - pytest finds fixtures by name
    basic_registry,
    docker_home,
    image_layout,
    pushed_images,
    registry,
    token_registry,
)

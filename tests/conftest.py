"""Fixtures shared by every test folder: the real OCI registries and the standard test images.

Also the hypothesis profiles: `ci` (the default, what `make test` runs) has a fixed seed and a
bounded example count; `fuzz` (`make fuzz`, HYPOTHESIS_PROFILE=fuzz) runs many more, randomly.
"""

import os

from hypothesis import HealthCheck, settings

from tests.oci_registry import (  # noqa: F401 - pytest finds fixtures by name
    basic_registry,
    docker_home,
    image_layout,
    pushed_images,
    registry,
    token_registry,
)

settings.register_profile(
    "ci",
    max_examples=int(os.environ.get("K3B_FUZZ_EXAMPLES", "60")),
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.register_profile(
    "fuzz",
    max_examples=int(os.environ.get("K3B_FUZZ_EXAMPLES", "5000")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

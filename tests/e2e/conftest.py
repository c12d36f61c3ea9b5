"""Browser tests reuse the integration fixtures (a real Docker engine, kernelspecs)."""

from tests.integration.conftest import (  # noqa: F401 - fixtures, registered by import
    engine,
    examples_kernel_image,
    kernel_image,
    make_kernelspec,
    new_images,
    no_leaked_containers,
)

import os

# Float64 where exactness is claimed (DESIGN.md §5). Tests that check float32 paths
# pass dtype explicitly.
os.environ.setdefault("JAX_ENABLE_X64", "1")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def embedded_tiny_cache(tmp_path_factory):
    """A cache directory holding the tiny embedded model, built once per test session.

    torch is imported here, not at module level, so the core tests run without the [torch] extra.
    """
    torch = pytest.importorskip("torch")
    from real_runs.embedded import EmbeddedConfig, embedded_path

    torch.set_num_threads(1)
    cache = tmp_path_factory.getbasetemp() / "qb-embedded-cache"
    embedded_path(EmbeddedConfig.tiny(), cache_dir=cache, progress=False)
    return cache

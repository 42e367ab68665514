import os

# Float64 where exactness is claimed (DESIGN.md §5). Tests that check float32 paths
# pass dtype explicitly.
os.environ.setdefault("JAX_ENABLE_X64", "1")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

"""ε_BA = Q(B)Q(A) − BA: its exact moments and the Monte Carlo engine, one layer per module.

moments      exact second moments under independent zero-mean noise
montecarlo   the public engine (simulate_eps_ba, simulate_grid + GridConfig): validation, statistics
units        what one work unit computes; a grid cut into units
noise_draws  the additive noise ε = Δ·u from the Threefry hash (quantbounds._prng)
gram         per-sample squared norms by the Gram algebra (never an m×n matrix)
sharding     the units over a 1-D device mesh
grid_jobs    a grid's cells as independent (submitit) jobs, merged bit for bit (simulate_grid_jobs)
"""

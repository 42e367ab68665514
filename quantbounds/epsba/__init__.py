"""ε_BA = Q(B)Q(A) − BA: its exact moments, the vmapped Monte Carlo engine, the Gram algebra and
device sharding.
"""

"""Quantizers and their noise: uniform RTN/SR (per tensor, channel, block), bitsandbytes-exact
NF4/FP4, int8; the additive-uniform noise model and codebook variances; Lloyd–Max; Widrow's test.
"""

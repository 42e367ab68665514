"""Quantizers and their noise: uniform RTN/SR (per tensor, channel, block), bitsandbytes-exact
NF4/FP4, int8 (quantizers, bnb4); fake quantization by kind, the students' one quantizer
(fake_quant); the additive-uniform noise model and codebook variances (noise); Lloyd–Max;
Widrow's test.
"""

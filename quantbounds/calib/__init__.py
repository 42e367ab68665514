"""Real-run calibration: the run-record schema, pairing of records, fits of the bounds' constants,
synthetic records with known truth, and the per-layer (rank, bits) allocator.
"""

"""Real-run calibration, read down in this order: the run-record schema (``records``), one
screening and pairing of records (``pairing``: :class:`~quantbounds.calib.pairing.PairedRuns`),
the robust fits of the bounds' constants (``fitting``, ``calibration``, typed results in
``fit_results``), the calibrated bit-widths (``bstar``); plus synthetic records with known truth
(``synthetic``) and the per-layer (rank, bits) allocator (``allocator``).
"""

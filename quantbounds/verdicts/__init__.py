"""Verdicts: the result type (``results``), the claim registry (``registry``), the decision
rules (``decisions``), the interval statistics with the one bootstrap resampler (``intervals``)
and the verdicts on the seeds' claims from paired runs (``claims``).
"""

"""Verdicts: the result type, the claim registry, decision rules and interval statistics.
"""

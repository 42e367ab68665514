"""The ``quantbounds`` command and its sub-commands (entry points in pyproject.toml).
"""

"""The markdown report and the figures, generated from the results files.
"""

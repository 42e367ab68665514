"""The paper's bounds and bit-width rules, the derived rules beside them, and the teacher–student
experiments (linear and one-hidden-layer) whose excess risk is known exactly; gradient variance.
"""

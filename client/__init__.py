"""The foundation's node: everything that decides what leaves the cohort's machine.

Nothing in this package imports from ``server`` or ``strategies``.
"""

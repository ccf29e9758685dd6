"""Evaluation helpers behind ``python -m crack_tf.evaluate``: statistics, plots and reports.

``stats`` is NumPy-only; ``plots`` imports matplotlib (Agg) lazily.
"""

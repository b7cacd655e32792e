"""How the benchmarks summarise repeated measurements: the median with its
interquartile range, of values or of ratios paired within each repeat."""

import statistics


def spread(values):
    """Median and interquartile range, as text (the value alone if only one)."""
    if len(values) < 2:
        return f"{values[0]:.2f}"
    # The default ("exclusive") quartiles, which RESULTS.md's figures use,
    # lie within the values from three on; of two they extrapolate beyond
    # both, even below 0 for a ratio. Two get the inclusive ones instead.
    method = "exclusive" if len(values) > 2 else "inclusive"
    q1, median, q3 = statistics.quantiles(values, n=4, method=method)
    return f"{median:.2f} ({q1:.2f}-{q3:.2f})"


def paired_ratio(a, b):
    """Median of a[i] / b[i] over repeats, with its interquartile range."""
    return spread([x / y for x, y in zip(a, b)])

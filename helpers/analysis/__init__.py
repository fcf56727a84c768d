"""Measuring: text metrics, comparison runs, benchmarks (tokens/s, roofline, memory), plots and tables."""

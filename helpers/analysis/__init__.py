"""Measuring: text metrics, comparison runs, benchmarks, plan and leak checks, plots and tables."""

"""Memory: one dtype table, one byte model, one peak measurement, and the planner built on them."""

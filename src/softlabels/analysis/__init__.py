"""Analysis of stored results: statistics over seeds, scaling-law fits, Pareto fronts, byte budgets."""

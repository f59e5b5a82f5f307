"""Analysis: the analytic cost model, paper-style tables and plots."""

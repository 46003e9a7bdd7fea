"""Run reports: plots and HTML."""

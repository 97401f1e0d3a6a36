"""Reports: plots (matplotlib) and tables (markdown/HTML) as pure functions of stored results."""

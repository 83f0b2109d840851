"""The business rules of LOAN_RULES.md as pure functions over DataFrames.

Nothing in this package imports Dagster or touches the file system except
`config.load_rules`, which reads the packaged rules file.
"""

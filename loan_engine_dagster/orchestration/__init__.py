"""Dagster wiring: resources, partitions, assets, checks, jobs and sensors.
`loan_engine_dagster.definitions` is the one entry point that exposes them."""

import dagster as dg

# One partition per batch; the key is the batch key (2026-02-19, or
# 2026-02-19-offcycle). Partitions are added by the inbox sensor and the CLI.
batches = dg.DynamicPartitionsDefinition(name="batches")

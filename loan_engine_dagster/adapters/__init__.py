"""I/O around the rules: the inbox, file readers and writers, the results database."""

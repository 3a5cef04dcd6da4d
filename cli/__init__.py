"""The `spo` command line (installed as the `spo_cli` package): thin, it parses and delegates."""

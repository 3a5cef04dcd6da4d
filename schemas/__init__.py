"""Lake table schemas: the single source of truth (installed as `spo_schemas`)."""

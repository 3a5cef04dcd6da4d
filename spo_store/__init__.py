"""spo_store: the trajectory lake (Lance datasets + DuckDB SQL). Knows nothing of torch."""

from spo_store.errors import SpoError

__all__ = ["SpoError"]

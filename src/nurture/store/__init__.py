"""Storage: the engine wrapper, the tables and their migrations."""

from nurture.store.database import Database

__all__ = ["Database"]

"""Computed traits: named values derived from a contact's events and profile (days since
last seen, order count, total revenue, RFM scores, ...), declared in the project and
usable in conditions (`{computed: orders, gte: 2}`) and templates.

Each kind computes its value twice, with one meaning: in SQL for a whole population
(`sql_value`) and in Python for one contact (`value`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from nurture.conditions.compile import SqlCompiler
    from nurture.conditions.env import Env
    from nurture.conditions.facts import ContactFacts
    from nurture.conditions.sqlvalues import ValueRef


class ComputedTrait(Protocol):
    key: str

    def value(self, facts: ContactFacts, env: Env) -> Any:
        """The value for one contact (None when there is none)."""

    def sql_value(self, compiler: SqlCompiler) -> ValueRef:
        """The value as a typed SQL expression over `contacts`."""

"""Contacts: profiles, their reserved traits, accounts, and personal-data requests."""

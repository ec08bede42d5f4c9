"""HTTP doors: parse the request, call a service, serialise the answer. No SQL here."""

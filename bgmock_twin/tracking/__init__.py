"""Synthetic payments followed end to end: load generation, lifecycle tracking over
Kafka, the ledger, simulations and their control API (``service.Tracking``)."""

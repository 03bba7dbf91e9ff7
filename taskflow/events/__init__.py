"""Events, their stored form, and the append-only event log."""

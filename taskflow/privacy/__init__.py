"""Personal data: data keys, KEKs, erasure, and the rewrite of legacy events (docs/privacy.md)."""

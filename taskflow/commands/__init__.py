"""The write side: command models, the pure decide/evolve of each aggregate, the handlers."""

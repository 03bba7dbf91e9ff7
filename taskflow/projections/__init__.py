"""Projector runtime and projections: read models in MongoDB and Redis."""

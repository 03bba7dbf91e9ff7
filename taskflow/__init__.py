"""TaskFlow: an async event-sourced task backend with CQRS on MongoDB and Redis."""

__version__ = "0.1.0"

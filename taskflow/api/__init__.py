"""The aiohttp REST API: app factory, routes, schemas, auth and middlewares."""

"""The HTTP layer: the app factory, routes, authentication, limits and body reading."""

"""Authentication: password hashing, access tokens, refresh-token families, the deny list."""

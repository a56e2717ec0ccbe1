"""The HTTP API of the isolator service."""

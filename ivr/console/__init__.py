"""The supervisor console: static page, script and style served at ``/`` by the API."""

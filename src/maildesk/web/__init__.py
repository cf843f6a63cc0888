"""The server-rendered UI: Jinja2 templates, static files, and the access policy they ask."""

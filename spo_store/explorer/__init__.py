"""`spo lake serve`: a local, read-only web explorer of the lake (docs/explorer.md).

`create_app(lake, sql_guard)` builds the Starlette app; `serve(...)` opens the lake, binds the
address and runs it with uvicorn. Pages read light columns from the in-memory metadata index
and heavy ones by row (`spo_store.explorer.data`); everything is rendered on the server
(Jinja2 with autoescape, Pygments, inline SVG), and no page runs a script.
"""

from spo_store.explorer.app import create_app, serve

__all__ = ["create_app", "serve"]

"""Sessions: one per rented VM.

- :mod:`maider.session.state`: the records on disk (``SessionStore``, ``SessionRecord``), see
  docs/LIFECYCLE.md ("Local files");
- :mod:`maider.session.lifecycle`: ``up`` (execute a Plan), ``down``, ``survey`` (list and
  orphans), ``status``, ``use``, ``reopen_tunnel``, ``environment``, ``cleanup``.

Both import pydantic; the CLI imports them inside its commands only.
"""

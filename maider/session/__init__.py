"""Local session state: one record per rented VM, kept under the platform state dir.

See :mod:`maider.session.state` and docs/LIFECYCLE.md ("Local files").
"""

"""Release tooling used by build.py (stdlib + `packaging`; never imported by the add-on or the worker)."""

"""`python -m flametalk COMMAND` (main.py) and its commands: bench, drift, reference-run, serve, live; worker.py is
the warm process the Blender add-on talks to (`python -m flametalk.commands.worker`), protocol.py its protocol."""

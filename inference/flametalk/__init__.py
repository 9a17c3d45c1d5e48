"""FlameTalk inference: ARTalk speech -> FLAME motion (25 fps, 106 channels).

Importing this package is cheap and never imports torch; the model lives in `flametalk.model`.
"""

__version__ = "0.1.0"

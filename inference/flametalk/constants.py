"""Units and layouts shared by every part of flametalk (and mirrored by the Blender add-on)."""

SAMPLE_RATE = 16_000  # Hz, what the audio encoder reads
FPS = 25  # motion frames per second
WINDOW_FRAMES = 100  # frames generated per autoregressive window (4 s)
WINDOW_SAMPLES = WINDOW_FRAMES * SAMPLE_RATE // FPS  # 64,000 samples of 16 kHz audio per window
STYLE_FRAMES = 50  # a style clip is 2 s of motion

MOTION_DIM = 106  # 100 expression + 3 head (global) rotation + 3 jaw rotation, axis-angle in radians
EXPR = slice(0, 100)
HEAD_ROT = slice(100, 103)
JAW_ROT = slice(103, 106)

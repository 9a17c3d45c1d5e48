"""Files in and out: audio (audio.py), motion .npz (motion.py, rules shared with the add-on in flame/motionfile.py),
checkpoints (checkpoint.py) and style clips (style.py)."""

"""Generation: audio conditions -> autoregressive multi-scale decoding -> motion (pipeline.py is the numpy-in,
numpy-out entry; autoregressive.py the window loop; condcache.py the audio-condition cache; postprocess.py the
smoothing and jaw clean-up)."""

"""The ARTalk network only: config, the AR transformer (artalk.py, attention.py), audio and style encoders, the
motion autoencoder (vae.py) with its quantisers (quantizer.py, codebook.py), and a random-init model for benchmarks."""

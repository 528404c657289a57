"""Chat with Gemma 3: a session (:mod:`.chat`) over Keras/JAX or LiteRT backends."""

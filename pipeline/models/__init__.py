"""Models: where weights and tokenizers come from, and how they are loaded.

Nothing heavy is imported here: ``import pipeline.models`` stays cheap, so the TUI can import
it at start. Import the submodules you need (``pipeline.models.tokenizer``,
``pipeline.models.embedded``); jax/keras are imported only inside the functions that use them.
"""

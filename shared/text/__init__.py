"""Text on either side of the engine: tokenizers, chat templates, detokenizing and stop strings.

The frontend's workers and the engine both use these; neither imports the other for them."""

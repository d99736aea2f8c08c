"""opdplug-drafters: train drafters for speculative decoding against a target, export them for SGLang."""

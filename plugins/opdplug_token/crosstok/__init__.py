"""Cross-tokenizer OPD: a teacher with its own tokenizer and chat template (see ``scorer``)."""

"""The dataset stage: load, validate, convert, format, deduplicate, measure, split."""

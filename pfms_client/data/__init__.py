"""Scenario data: schema, readers, validation, synthetic generator, tensors."""

"""fintrans: paper-faithful transformers in Flax."""

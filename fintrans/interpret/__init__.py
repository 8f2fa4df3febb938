"""Explaining trained models' predictions: Shapley token attributions (`shapley`)."""
from fintrans.interpret.shapley import (TokenAttribution, exact_shapley, permutation_shapley, shapley_values,
                                        token_attributions)

__all__ = ["TokenAttribution", "exact_shapley", "permutation_shapley", "shapley_values", "token_attributions"]

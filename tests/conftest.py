"""Shared test settings: fail loudly on accidental broadcasting or dtype promotion."""

import jax

jax.config.update("jax_numpy_rank_promotion", "raise")

"""Reconstruction engines on one shared loop; a registry name -> (run, Params)."""
